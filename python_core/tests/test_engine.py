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
import pydicom
import pytest
import SimpleITK as sitk
import torch
from imaging_phantoms import differs_only_on_label_boundaries, tumour_mask
from tiny_models import export, tiny_preset

from mafm3.cli import main
from mafm3.engine import Cancelled, Engine, RunRequest
from mafm3.engine import runner as engine_runner
from mafm3.errors import MAFM3Error
from mafm3.imaging.preprocess import PreprocessingConfig, to_model_array
from mafm3.model.skill_model import build_skill_model
from mafm3.skills.backbone import load_backbone
from mafm3.skills.packs import install_pack
from mafm3.skills.presets import PRESETS, Preset

# Every run here takes `--precision auto`, as users do: on both CPU paths in `make test`. Labels are compared
# exactly only where no network computes them (the pass-through segmenter) or against the same engine's own
# earlier run (same module, same input, same kernels).
pytestmark = pytest.mark.precision


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


def test_a_skill_in_the_authors_axis_order_sees_anterior_to_posterior_along_t_and_maps_back_exactly(
    backbone_manifest, tmp_path, monkeypatch
):
    """The authors' `Orientationd(axcodes="PLS")`: array axis 0 (the CT-ViT's T) runs anterior -> posterior.
    The CT is stored RAS-wise (x index towards the right, y index towards the front), so only a reorientation
    puts the gradient where PLS says; its value is the LPS y coordinate (posterior positive) in mm."""
    authors = PRESETS["hecktor-seg-ct-authors"].preprocessing
    tiny = tiny_preset("tiny-seg-pls")
    fields = ("orientation", "axis_order", "interpolator")
    preset = replace(tiny, preprocessing={**tiny.preprocessing, **{k: authors[k] for k in fields}})
    backbone = load_backbone(backbone_manifest["path"])
    export(
        build_skill_model(preset.config, backbone, preset.name),
        tmp_path / "pls",
        backbone_manifest,
        preset=preset,
    )
    install_pack(tmp_path / "pls")

    size, spacing = (30, 26, 20), (2.0, 2.0, 2.0)  # (x, y, z)
    direction = np.diag([-1.0, -1.0, 1.0])
    origin = np.array([25.0, 20.0, -10.0])
    k, j, i = np.indices(size[::-1])  # SimpleITK array order (z, y, x)
    lps_y = origin[1] + direction[1, 1] * j * spacing[1]  # mm; increasing towards posterior
    hu = np.where((i < 2) | (i >= size[0] - 2), -1000.0, 2.0 * lps_y)  # tissue at -80 ... 20 HU, air at R, L
    ct = sitk.GetImageFromArray(hu.astype(np.float32))
    ct.SetSpacing(spacing)
    ct.SetOrigin(tuple(origin))
    ct.SetDirection(tuple(direction.ravel()))
    mask = tumour_mask(ct)
    sitk.WriteImage(ct, str(tmp_path / "ct.nrrd"))
    seen = {}

    def pass_through(skill, prepared, window, **kwargs):
        seen["axis_order"], seen["ct"] = prepared.axis_order, prepared.array[0]
        labels = to_model_array(mask, prepared.grid, prepared.axis_order, "nearest")
        return labels, np.zeros(labels.shape, np.float32)

    monkeypatch.setattr(engine_runner, "segment", pass_through)
    result, _ = engine().run(RunRequest(ct=str(tmp_path / "ct.nrrd"), skills=["tiny-seg-pls"]))
    assert seen["axis_order"] == "yxz"
    inside = seen["ct"] > -1  # the tissue (air is -1 after the window)
    t, h, w = (np.ptp(axis) + 1 for axis in np.nonzero(inside))
    assert (t, h, w) == (size[1], size[0] - 4, size[2])  # T: y (A-P), H: x (R-L), W: z (I-S)
    box = tuple(slice(a.min(), a.max() + 1) for a in np.nonzero(inside))
    values = seen["ct"][box]
    assert (np.diff(values, axis=0) > 0).all()  # rising towards posterior: T runs anterior -> posterior
    np.testing.assert_allclose(np.diff(values, axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(np.diff(values, axis=2), 0, atol=1e-5)
    labels = result.segmentation.labels
    assert labels.GetSize() == ct.GetSize() and labels.GetDirection() == ct.GetDirection()
    assert labels.GetOrigin() == ct.GetOrigin() and labels.GetSpacing() == ct.GetSpacing()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(mask))


def test_the_engine_applies_the_postprocessing_its_manifest_declares(installed_skills, study_files):
    from types import SimpleNamespace

    from mafm3.imaging.preprocess import prepare_input
    from mafm3.imaging.study import load_study
    from mafm3.results import GTVN, GTVP, SegmentationResult

    ct, ct_path, _ = study_files
    study = load_study(str(ct_path))
    mask = tumour_mask(ct)
    manifest = SimpleNamespace(
        id="s",
        version="1",
        segments=lambda: [GTVP, GTVN],
        postprocessing={"min_component_ml": 0.0},
        weights={"sha256": "0" * 64},
    )
    prepared = prepare_input(study, PreprocessingConfig(spacing_mm=ct.GetSpacing(), roi_method="none"))
    labels = to_model_array(mask, prepared.grid, prepared.axis_order, "nearest")
    kept = engine_runner.segmentation_on_ct(
        labels, np.zeros(labels.shape, np.float32), prepared, study, manifest
    )
    # Without postprocessing: exactly the labels brought back to the CT grid (oblique: by label-Gaussian).
    on_ct = SegmentationResult(
        engine_runner.labels_to_ct_grid(labels, prepared, study.ct), [GTVP, GTVN], "s", "1"
    )
    node_ml = on_ct.volumes_ml()["GTVn"]
    assert kept.volumes_ml() == on_ct.volumes_ml() and node_ml > 0 and kept.removed == []
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


def tiny_petct_preset() -> Preset:
    """The tiny segmentation skill on CT and PET: a 2-channel patch embedding and the PET skip encoder."""
    ct = tiny_preset("tiny-seg-petct")
    petct = PRESETS["demo-seg-petct"]
    config = replace(
        ct.config,
        patch_embedding=replace(ct.config.patch_embedding, channels=2),
        decoder=replace(ct.config.decoder, pet_skip=True),
    )
    return replace(ct, config=config, modalities=petct.modalities, preprocessing=petct.preprocessing)


def test_missing_pet_for_a_pet_ct_skill_exits_with_one_sentence_and_leaves_out_untouched(
    installed_skills,
    backbone_manifest,
    study_files,
    tmp_path,
    capsys,
):
    preset = tiny_petct_preset()
    skill = build_skill_model(preset.config, load_backbone(backbone_manifest["path"]), preset.name)
    export(skill, tmp_path / "pack-petct", backbone_manifest, preset=preset)
    install_pack(tmp_path / "pack-petct")
    _, ct_path, _ = study_files
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("annotator notes")
    assert main(["skill", "list"]) == 0 and "tiny-seg-petct" in capsys.readouterr().out  # installed
    code = main(
        [
            "run",
            "--ct",
            str(ct_path),
            "--skill",
            "tiny-seg-petct",
            "--out",
            str(out),
            "--overwrite",
            "--quiet",
        ]
    )
    error = capsys.readouterr().err.strip()
    assert code == 1 and error.count("\n") == 0
    assert "'tiny-seg-petct' needs a PET volume and none was given" in error and "tiny-seg-ct" in error
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


def test_an_oblique_ct_reaches_the_model_in_the_patients_axes_and_returns_on_its_own_grid(
    installed_skills, study_files, monkeypatch
):
    ct, ct_path, _ = study_files
    assert np.abs(np.array(ct.GetDirection()) - np.eye(3).ravel()).max() > 0.1  # the phantom is oblique
    mask = tumour_mask(ct)
    seen = {}

    def pass_through(skill, prepared, window, **kwargs):  # labels and a certain (0) uncertainty map
        seen["direction"] = prepared.grid.direction
        labels = to_model_array(mask, prepared.grid, prepared.axis_order, "nearest")
        return labels, np.zeros(labels.shape, np.float32)

    monkeypatch.setattr(engine_runner, "segment", pass_through)
    result, _ = engine().run(RunRequest(ct=str(ct_path), skills=["tiny-seg-ct"]))
    assert seen["direction"] == tuple(np.eye(3).ravel())  # L, P, S: as the skills were trained
    labels = result.segmentation.labels
    assert labels.GetDirection() == ct.GetDirection() and labels.GetOrigin() == ct.GetOrigin()
    assert differs_only_on_label_boundaries(sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(mask))


def test_a_sliding_window_batch_below_one_is_refused_in_one_sentence(study_files, tmp_path, capsys):
    _, ct_path, _ = study_files
    for given in ("0", "-2"):
        with pytest.raises(SystemExit) as exit_code:
            main(["run", "--ct", str(ct_path), "--out", str(tmp_path / "out"), "--sw-batch-size", given])
        assert exit_code.value.code == 2 and f"must be at least 1, got {given}" in capsys.readouterr().err
    with pytest.raises(
        MAFM3Error, match=r"^The sliding-window batch size must be at least 1 window per pass"
    ):
        RunRequest(ct=str(ct_path), sw_batch_size=0)  # the worker's path: params become a RunRequest
    assert not (tmp_path / "out").exists()


def test_the_ct_series_option_picks_the_series_among_several(tmp_path):
    from imaging_phantoms import write_dicom_series

    values = np.full((20, 20, 20), 40.0)
    values[:, :, :3] = -1000.0
    for name, slices in (("big", 20), ("small", 18)):
        write_dicom_series(tmp_path / name, values[:slices], (1.0, 1.0, 2.0), (0, 0, 0), np.eye(3), "CT")
    small_uid = str(pydicom.dcmread(next((tmp_path / "small").iterdir())).SeriesInstanceUID)
    study = engine().load(RunRequest(ct=str(tmp_path), ct_series_uid=small_uid))
    assert study.ct.GetSize()[2] == 18 and study.sources["ct"]["series_instance_uid"] == small_uid
    study = engine().load(RunRequest(ct=str(tmp_path)))
    assert study.ct.GetSize()[2] == 20 and "choose another with --ct-series UID" in study.warnings[0]


def test_the_engine_skips_empty_windows_over_a_fitted_box_unless_asked_for_dense(
    installed_skills, study_files, monkeypatch
):
    ct, ct_path, _ = study_files
    seen = []

    def recording(skill, prepared, window, **kwargs):
        seen.append((kwargs["skip_empty"], kwargs["fit_box"], prepared.occupied.sum()))
        return np.zeros(prepared.shape, np.uint8), np.zeros(prepared.shape, np.float32)

    monkeypatch.setattr(engine_runner, "segment", recording)
    for dense in (False, True):
        engine().run(RunRequest(ct=str(ct_path), skills=["tiny-seg-ct"], dense=dense, precision="fp32"))
    body_voxels = (sitk.GetArrayFromImage(ct) > -500).sum()
    assert [flags[:2] for flags in seen] == [(True, True), (False, False)]
    assert seen[0][2] > body_voxels  # the body, resampled onto the finer model grid, is what is occupied


def test_a_report_file_joins_the_clinical_record_of_the_study(study_files, tmp_path):
    _, ct_path, clinical = study_files
    report = tmp_path / "report.txt"
    report.write_text("Patient Information and Clinical Summary: 61-year-old.\n")
    study = engine().load(RunRequest(ct=str(ct_path), clinical=str(clinical), report=str(report)))
    assert study.clinical.report == "Patient Information and Clinical Summary: 61-year-old."
    assert (study.clinical.age, study.clinical.t_stage) == (61.0, "T2")  # the JSON's fields stay
    assert study.sources["report"] == str(report)
    alone = engine().load(RunRequest(ct=str(ct_path), report=str(report)))
    assert alone.clinical.report == study.clinical.report and alone.clinical.age is None
