"""The engine and `mafm3 run`: study in, results on the CT's own grid out, skills sharing one backbone.

Oracles: a mask drawn on the CT must come back identical through preprocessing and the inverse mapping (a
pass-through segmenter stands in for the network); geometry of every written label map equals the CT's;
skills with equal preprocessing share one preprocessing pass; bad input exits 1 with one sentence and leaves
--out untouched.
"""

from __future__ import annotations

import json
import threading
from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from test_model_lora import SMALL_BACKBONE
from test_skills_packs import backbone_manifest, export, home, tiny_preset  # noqa: F401 (fixtures)

from mafm3.cli import main
from mafm3.engine import Cancelled, Engine, RunRequest
from mafm3.engine import runner as engine_runner
from mafm3.errors import MAFM3Error
from mafm3.imaging.preprocess import PreprocessingConfig, to_model_array
from mafm3.model.mtlr import fit_time_bins
from mafm3.model.prognosis import PrognosisConfig
from mafm3.model.skill_model import SkillConfig, build_skill_model
from mafm3.skills.backbone import load_backbone
from mafm3.skills.packs import install_pack
from mafm3.skills.presets import PRESETS, Preset

OBLIQUE = (0.96, -0.28, 0.0, 0.28, 0.96, 0.0, 0.0, 0.0, 1.0)  # 16° about S


def phantom_ct(size=(48, 40, 16), spacing=(3.0, 3.0, 6.0), direction=OBLIQUE) -> sitk.Image:
    """Air with a water-like body ellipse and a slightly denser 'tumour', on an oblique, off-origin grid.

    The whole volume (144 x 120 x 96 mm) fits in the demo skills' 192 x 192 x 96 mm box, so nothing is cut.
    """
    x, y = np.meshgrid(np.arange(size[0]), np.arange(size[1]), indexing="xy")
    body = ((x - size[0] / 2) / (size[0] / 2.6)) ** 2 + ((y - size[1] / 2) / (size[1] / 2.8)) ** 2 < 1
    array = np.full((size[2], size[1], size[0]), -1000.0, np.float32)
    array[:, body] = 40.0
    array[5:9, 18:24, 20:27] = 70.0
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((-71.5, 33.25, -412.0))
    image.SetDirection(direction)
    return image


def tumour_mask(ct: sitk.Image) -> sitk.Image:
    array = np.zeros(sitk.GetArrayViewFromImage(ct).shape, np.uint8)
    array[5:9, 18:24, 20:27] = 1
    array[10:12, 8:12, 30:34] = 2
    mask = sitk.GetImageFromArray(array)
    mask.CopyInformation(ct)
    return mask


def tiny_prognosis_preset() -> Preset:
    demo = PRESETS["demo-prognosis"]
    prognosis = replace(demo.config.prognosis, image_dim=SMALL_BACKBONE["dim"], num_time_bins=3)
    config = SkillConfig(task="prognosis", lora=demo.config.lora, prognosis=prognosis)
    return Preset(
        "tiny-prognosis",
        "tiny test prognosis",
        config,
        demo.modalities,
        tiny_preset().preprocessing,  # the segmentation skill's, so the two can share one pass
        demo.inference,
        demo.outputs,
    )


@pytest.fixture()
def installed_skills(backbone_manifest, tmp_path):  # noqa: F811
    """A tiny CT segmentation skill and a tiny prognosis skill with the same preprocessing, installed."""
    backbone = load_backbone(backbone_manifest["path"])
    segmenter = build_skill_model(tiny_preset().config, backbone, "tiny-seg-ct")
    seg = export(segmenter, tmp_path / "pack-seg", backbone_manifest)
    preset = tiny_prognosis_preset()
    prognosis = build_skill_model(preset.config, backbone, "tiny-prognosis")
    assert isinstance(prognosis.config.prognosis, PrognosisConfig)
    prognosis.head.set_time_bins(fit_time_bins(torch.tensor([200.0, 500, 900, 1500]), torch.ones(4), 3))
    from mafm3.skills.packs import export_pack

    prog = export_pack(
        prognosis,
        tmp_path / "pack-prognosis",
        preset=preset,
        version="1.0.0",
        backbone_id=backbone_manifest["id"],
        backbone_sha256=backbone_manifest["sha256"],
    )
    for folder in (tmp_path / "pack-seg", tmp_path / "pack-prognosis"):
        install_pack(folder)
    return seg, prog


@pytest.fixture()
def study_files(tmp_path):
    ct = phantom_ct()
    sitk.WriteImage(ct, str(tmp_path / "ct.nrrd"))
    (tmp_path / "clinical.json").write_text(json.dumps({"age": 61, "hpv": True, "t_stage": "T2"}))
    return ct, tmp_path / "ct.nrrd", tmp_path / "clinical.json"


def engine() -> Engine:
    return Engine("cpu")


def test_segmentation_comes_back_on_the_ct_grid_exactly(installed_skills, study_files, monkeypatch):
    ct, ct_path, _ = study_files
    mask = tumour_mask(ct)

    def pass_through(skill, prepared, window, **kwargs):  # the network replaced by the mask itself
        labels = to_model_array(mask, prepared.grid, prepared.axis_order, "nearest")
        uncertainty = np.where(labels == 2, np.float32(0.5), np.float32(0.0))  # unsure about the nodes only
        return labels, uncertainty

    monkeypatch.setattr(engine_runner, "segment", pass_through)
    result, _ = engine().run(RunRequest(ct=str(ct_path), skills=["tiny-seg-ct"]))
    labels = result.segmentation.labels
    assert labels.GetSize() == ct.GetSize() and labels.GetPixelID() == sitk.sitkUInt8
    assert labels.GetSpacing() == ct.GetSpacing() and labels.GetOrigin() == ct.GetOrigin()
    assert labels.GetDirection() == ct.GetDirection()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(mask))
    voxel_ml = np.prod(ct.GetSpacing()) / 1000
    assert result.segmentation.volumes_ml() == pytest.approx(
        {"GTVp": 4 * 6 * 7 * voxel_ml, "GTVn": 32 * voxel_ml}
    )
    uncertainty = result.segmentation.uncertainty  # percent on the CT grid, as exact as the labels
    assert uncertainty.GetSize() == ct.GetSize() and uncertainty.GetDirection() == ct.GetDirection()
    measured = result.segmentation.measurements
    assert measured[1].uncertainty_percent == 0 and measured[2].uncertainty_percent == pytest.approx(
        50, abs=1
    )
    assert measured[1].volume_ml == pytest.approx(4 * 6 * 7 * voxel_ml) and measured[1].suv_max is None
    assert "no-lesion" not in [flag.code for flag in result.segmentation.qc_flags]


def test_the_engine_applies_the_postprocessing_its_manifest_declares(installed_skills, study_files):
    from types import SimpleNamespace

    from mafm3.imaging.preprocess import prepare_input
    from mafm3.imaging.study import load_study
    from mafm3.results import GTVN, GTVP

    ct, ct_path, _ = study_files
    study = load_study(str(ct_path))
    mask = tumour_mask(ct)
    manifest = SimpleNamespace(
        id="s", version="1", segments=lambda: [GTVP, GTVN], postprocessing={"min_component_ml": 0.0}
    )
    prepared = prepare_input(study, PreprocessingConfig(spacing_mm=ct.GetSpacing(), roi_method="none"))
    labels = to_model_array(mask, prepared.grid, prepared.axis_order, "nearest")
    kept = engine_runner.segmentation_on_ct(
        labels, np.zeros(labels.shape, np.float32), prepared, study, manifest
    )
    node_ml = 32 * np.prod(ct.GetSpacing()) / 1000
    assert kept.volumes_ml()["GTVn"] == pytest.approx(node_ml) and kept.removed == []
    manifest.postprocessing = {"min_component_ml": node_ml * 1.5}  # the node is smaller, GTVp larger
    cleaned = engine_runner.segmentation_on_ct(
        labels, np.zeros(labels.shape, np.float32), prepared, study, manifest
    )
    assert cleaned.volumes_ml()["GTVn"] == 0 and cleaned.measurements[2] is None
    assert cleaned.volumes_ml()["GTVp"] == kept.volumes_ml()["GTVp"]
    assert [r["label"] for r in cleaned.removed] == [2] and cleaned.postprocessing == manifest.postprocessing


def test_skills_with_equal_preprocessing_share_one_pass_and_one_backbone(
    installed_skills, study_files, monkeypatch
):
    _, ct_path, clinical = study_files
    calls = []
    real_prepare = engine_runner.prepare_input
    monkeypatch.setattr(
        engine_runner, "prepare_input", lambda *a, **k: calls.append(1) or real_prepare(*a, **k)
    )
    warm = engine()
    request = RunRequest(ct=str(ct_path), clinical=str(clinical), tasks=["segmentation", "prognosis"])
    result, _ = warm.run(request)
    assert len(calls) == 1 and len(warm.backbones) == 1
    assert result.segmentation.skill_id == "tiny-seg-ct" and result.prognosis.skill_id == "tiny-prognosis"
    survival = result.prognosis.survival
    assert survival[0] == pytest.approx(1.0) and all(
        a >= b for a, b in zip(survival, survival[1:], strict=False)
    )
    assert set(result.prognosis.survival_at_years) == {1, 2, 3, 5}
    assert {"read", "preprocess", "backbone", "head", "total"} <= set(result.timings_s)
    assert result.backbone["sha256"] and result.peak_rss_gb > 0

    again, _ = warm.run(request)  # warm: nothing is loaded twice, and the answer does not change
    assert len(warm.backbones) == 1 and again.prognosis.risk == result.prognosis.risk
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(again.segmentation.labels), sitk.GetArrayFromImage(result.segmentation.labels)
    )


def test_cancel_stops_the_run(installed_skills, study_files):
    _, ct_path, _ = study_files
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        engine().run(RunRequest(ct=str(ct_path), skills=["tiny-seg-ct"]), cancel=cancel)


def test_run_writes_every_output_with_the_ct_geometry(installed_skills, study_files, tmp_path, capsys):
    ct, ct_path, clinical = study_files
    out = tmp_path / "out"
    code = main(
        [
            "run",
            "--ct",
            str(ct_path),
            "--clinical",
            str(clinical),
            "--task",
            "segmentation",
            "prognosis",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    assert code == 0
    names = {p.name for p in out.iterdir()}
    assert {"segmentation.seg.nrrd", "labels.nii.gz", "prognosis.json", "result.json", "report.html"} <= names
    assert "uncertainty.nii.gz" in names
    labels = sitk.ReadImage(str(out / "labels.nii.gz"))
    assert labels.GetSize() == ct.GetSize()
    np.testing.assert_allclose(labels.GetOrigin(), ct.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(labels.GetDirection(), ct.GetDirection(), atol=1e-5)
    record = json.loads((out / "result.json").read_text())
    assert record["device"] == "cpu" and record["backbone"]["sha256"]
    segments = record["segmentation"]["segments"]
    assert [s["name"] for s in segments] == ["GTVp", "GTVn"] and "qc_flags" in record["segmentation"]
    assert all(s["suv_max"] is None and "components" in s for s in segments)  # a CT-only run: SUV absent
    assert json.loads((out / "prognosis.json").read_text())["skill"]["id"] == "tiny-prognosis"


def test_missing_pet_for_a_pet_ct_skill_exits_with_one_sentence_and_leaves_out_untouched(
    installed_skills, study_files, tmp_path, capsys
):
    _, ct_path, _ = study_files
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("annotator notes")
    code = main(["run", "--ct", str(ct_path), "--skill", "tiny-seg-petct", "--out", str(out), "--overwrite"])
    error = capsys.readouterr().err.strip()
    assert code == 1 and error.count("\n") == 0 and "tiny-seg-petct" in error
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_rtstruct_of_a_ct_not_read_from_dicom_is_refused_and_out_stays_as_it_was(
    installed_skills, study_files, tmp_path, capsys
):
    _, ct_path, _ = study_files
    out = tmp_path / "out"
    code = main(
        ["run", "--ct", str(ct_path), "--skill", "tiny-seg-ct", "--out", str(out), "--rtstruct", "--quiet"]
    )
    error = capsys.readouterr().err.strip()
    assert code == 1 and "RTSTRUCT needs a DICOM CT input" in error and error.count("\n") == 0
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_a_device_that_is_not_there_is_refused(installed_skills, study_files):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _, ct_path, _ = study_files
    with pytest.raises(MAFM3Error, match="mafm3 doctor"):
        Engine("cuda").run(RunRequest(ct=str(ct_path), skills=["tiny-seg-ct"]))
