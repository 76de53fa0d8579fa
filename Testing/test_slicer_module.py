"""MAFM3Slicer.py under the slicer-core harness: module metadata, the Logic on volume nodes, the self-test."""

import dataclasses
import re
import types
import unittest
from pathlib import Path

import numpy as np
import pytest
import slicer
from skill_packs import write_pack
from synthetic_volumes import ras_matrix, rotation_about_z, volume_node

from mafm3.clinical import ClinicalRecord
from MAFM3SlicerLib.geometry import ijk_to_ras_of

UI_FILE = Path(__file__).resolve().parent.parent / "MAFM3Slicer" / "Resources" / "UI" / "MAFM3Slicer.ui"


def test_the_module_declares_itself_a_segmentation_module_with_demo_skills_not_for_clinical_use(mafm3_slicer):
    parent = types.SimpleNamespace()
    mafm3_slicer.MAFM3Slicer(parent)

    assert parent.title == "MAFM3"
    assert parent.categories == ["Segmentation"]
    assert "demo skills: synthetic data, not for clinical use" in parent.helpText
    assert "arXiv 2511.11212" in parent.acknowledgementText


def test_logic_describes_an_oblique_study_and_names_the_problem(mafm3_slicer, mrml_scene):
    voxels = np.full((6, 7, 8), -1000, dtype=np.int16)
    voxels[2:4, 2:5, 2:6] = 60
    ct = volume_node(mrml_scene, voxels, ras_matrix(rotation_about_z(35.0), (0.6, 0.8, 3.0), (0, 0, 0)), "CT")
    pet_in_becquerel = volume_node(
        mrml_scene,
        np.full((6, 7, 8), 4000.0),
        ras_matrix(rotation_about_z(35.0), (0.6, 0.8, 3.0), (0, 0, 0)),
        "PET",
    )
    logic = mafm3_slicer.MAFM3SlicerLogic()

    assert logic.describeStudy(ct).problems == ()
    (problem,) = logic.describeStudy(ct, pet_in_becquerel).problems
    assert "'PET' reads 4000.0 at its 99th percentile" in problem


def test_logic_round_trips_an_anisotropic_oblique_volume_through_a_file_exactly(
    mafm3_slicer, mrml_scene, tmp_path
):
    voxels = np.random.default_rng(0).integers(-1024, 3000, size=(5, 6, 7)).astype(np.int16)
    matrix = ras_matrix(
        rotation_about_z(-15.0) @ np.diag([-1.0, 1.0, -1.0]), (0.45, 0.7, 3.3), (-80.0, 12.5, 600.0)
    )
    ct = volume_node(mrml_scene, voxels, matrix, "CT")
    logic = mafm3_slicer.MAFM3SlicerLogic()

    loaded = logic.fileToVolume(logic.volumeToFile(ct, tmp_path / "ct.nrrd"), name="CT again")

    assert loaded.GetScene() is slicer.mrmlScene
    assert loaded.GetName() == "CT again"
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(loaded), voxels)
    np.testing.assert_allclose(ijk_to_ras_of(loaded), matrix, rtol=0, atol=1e-12)


def test_logic_turns_the_clinical_panel_into_a_record_the_core_accepts(mafm3_slicer):
    panel = {name: info.default for name, info in mafm3_slicer.MAFM3SlicerParameterNode.allParameters.items()}
    panel.update(age=61.0, sex="M", tobacco="yes", hpv="no", performanceStatus="1", tStage="T4a", mStage="M0")
    logic = mafm3_slicer.MAFM3SlicerLogic()

    record = ClinicalRecord.from_dict(logic.clinicalRecord(panel))

    expected = ClinicalRecord(
        age=61.0, sex="M", tobacco=True, hpv=False, performance_status=1, t_stage="T4a", m_stage="M0"
    )
    assert record == expected


def test_an_untouched_clinical_panel_gives_an_empty_record(mafm3_slicer):
    panel = {name: info.default for name, info in mafm3_slicer.MAFM3SlicerParameterNode.allParameters.items()}
    assert mafm3_slicer.MAFM3SlicerLogic().clinicalRecord(panel) == {}


def clinical_panel_offers(parameter_class) -> dict[str, list]:
    """Every known value each clinical field of the panel offers: its choices, or a plausible number."""
    from MAFM3SlicerLib.clinical import CLINICAL_FIELDS, UNKNOWN

    offers = {}
    for name in CLINICAL_FIELDS:
        annotations = parameter_class.allParameters[name].unalteredType.__metadata__
        choices = next((a.choices for a in annotations if hasattr(a, "choices")), None)
        offers[name] = [c for c in choices if c != UNKNOWN] if choices else [70.0]
    return offers


def test_every_value_the_clinical_panel_offers_is_accepted_by_the_cores_record_as_that_one_field(
    mafm3_slicer,
):
    """Each choice of each clinical field, alone, becomes a record the core accepts that knows exactly that
    field. How many values there are to try comes from the .ui file (its combo boxes and spin boxes), so an
    empty choice list fails here instead of passing with nothing tried."""
    from extension_checks import ui_widgets

    from MAFM3SlicerLib.clinical import CLINICAL_FIELDS

    parameter_class = mafm3_slicer.MAFM3SlicerParameterNode
    unknown_panel = {name: info.default for name, info in parameter_class.allParameters.items()}
    bound = {
        widget.properties["SlicerParameterName"]: widget
        for widget in ui_widgets(UI_FILE).values()
        if widget.properties.get("SlicerParameterName") in CLINICAL_FIELDS
    }
    expected_count = sum(
        len([item for item in widget.items if item != "unknown"]) if widget.widget_class == "QComboBox" else 1
        for widget in bound.values()
    )
    logic = mafm3_slicer.MAFM3SlicerLogic()

    offers = clinical_panel_offers(parameter_class)
    tried = 0
    for name, values in offers.items():
        for value in values:
            record = ClinicalRecord.from_dict(logic.clinicalRecord({**unknown_panel, name: value}))
            known = [
                f.name for f in dataclasses.fields(ClinicalRecord) if getattr(record, f.name) is not None
            ]
            assert known == [re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()], (name, value, known)
            tried += 1

    assert set(bound) == set(CLINICAL_FIELDS) == set(offers)
    assert expected_count > len(CLINICAL_FIELDS)  # most fields offer several choices
    assert tried == expected_count


def test_a_fully_known_clinical_panel_fills_every_field_of_the_cores_record(mafm3_slicer):
    parameter_class = mafm3_slicer.MAFM3SlicerParameterNode
    known_panel = {name: values[0] for name, values in clinical_panel_offers(parameter_class).items()}
    record = mafm3_slicer.MAFM3SlicerLogic().clinicalRecord(known_panel)
    # A free-text report (the authors' LLM-written text) comes from a file (`mafm3 run --report`), not the
    # panel.
    assert set(record) == {field.name for field in dataclasses.fields(ClinicalRecord)} - {"report"}


def test_logic_lists_the_skill_packs_for_the_panel(mafm3_slicer, skills_home):
    write_pack(skills_home / "skills", "hecktor-seg-ct")
    assert [skill.id for skill in mafm3_slicer.MAFM3SlicerLogic().availableSkills()] == ["hecktor-seg-ct"]


def test_installing_a_pack_that_is_not_there_reports_the_cores_sentence(mafm3_slicer, tmp_path):
    from MAFM3SlicerLib.commands import CommandError

    with pytest.raises(CommandError, match="is not a skill pack folder or .zip, nor an installed or shipped"):
        mafm3_slicer.MAFM3SlicerLogic().installSkillPack(tmp_path / "pack.zip")


def test_the_self_test_runs_the_skills_through_the_worker_headless(mafm3_slicer, mrml_scene, skills_home):
    write_pack(skills_home / "skills", "fake-seg-petct", "segmentation", ("CT", "PET"), demo=True)
    write_pack(skills_home / "skills", "fake-seg-ct", "segmentation", ("CT",), demo=True)
    write_pack(skills_home / "skills", "fake-rfs", "prognosis", ("CT",), demo=True)
    ran = []
    test = mafm3_slicer.MAFM3SlicerTest()
    test.delayDisplay = lambda message, msec=None: ran.append(message)

    test.runTest()

    assert ran[-1].startswith("Demo skills ran through the worker: ")
    ran_skills = set(ran[-1].split(": ")[1].split(", "))
    assert ran_skills == {"fake-seg-petct", "fake-rfs"}  # one segmentation (the PET/CT one), one prognosis
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0  # cleared after itself


def test_the_self_test_skips_with_the_reason_when_there_is_no_skill_at_all(
    mafm3_slicer, mrml_scene, skills_home, monkeypatch, tmp_path
):
    import mafm3.config

    monkeypatch.setattr(mafm3.config, "bundled_skills_dir", lambda: tmp_path / "no shipped skills")
    test = mafm3_slicer.MAFM3SlicerTest()

    with pytest.raises(unittest.SkipTest, match="no skill pack is installed or shipped with the mafm3 core"):
        test.test_demo_skills_run_through_the_worker_into_nodes()


@pytest.mark.parametrize(
    ("installed_change", "reason"),
    [
        ({"mafm3": None}, "the mafm3 core is not installed"),
        ({"torch": None}, "PyTorch is not installed"),
        ({"monai": None}, "the mafm3 core is not installed"),  # a half-finished install is not ready
    ],
)
def test_the_self_test_skips_with_the_reason_when_the_core_or_torch_is_missing(
    mafm3_slicer, mrml_scene, monkeypatch, installed_change, reason
):
    from MAFM3SlicerLib import dependencies, logic

    installed = {**dependencies.installed_distributions(), **installed_change}
    installed = {name: version for name, version in installed.items() if version is not None}
    monkeypatch.setattr(logic, "installed_distributions", lambda: installed)
    monkeypatch.setattr(dependencies, "installed_distributions", lambda: installed)
    test = mafm3_slicer.MAFM3SlicerTest()

    with pytest.raises(unittest.SkipTest, match=reason):
        test.test_demo_skills_run_through_the_worker_into_nodes()


def test_the_self_test_fails_on_a_run_that_overruns_and_still_stops_the_worker_and_clears_up(
    mafm3_slicer, mrml_scene, skills_home, monkeypatch, tmp_path
):
    import mafm3.config
    from MAFM3SlicerLib import self_test

    monkeypatch.setattr(mafm3.config, "bundled_skills_dir", lambda: tmp_path / "no shipped skills")
    monkeypatch.setattr(self_test, "JOB_TIMEOUT_S", 1.0)
    write_pack(skills_home / "skills", "fake-seg-slow", "segmentation", ("CT", "PET"), demo=True)  # runs 20 s
    logic = mafm3_slicer.MAFM3SlicerLogic()
    test = mafm3_slicer.MAFM3SlicerTest()

    with pytest.raises(TimeoutError, match="did not end within 1 s"):
        self_test.check_demo_skills_through_the_worker(test, logic)

    assert not logic.workerStarted and not logic.jobRunning and logic.resultsFolder is None


def test_an_install_that_cannot_go_on_in_this_session_is_refused_before_anything_starts(
    mafm3_slicer, tmp_path
):
    from MAFM3SlicerLib.dependencies import dependency_status, installed_distributions
    from MAFM3SlicerLib.errors import PanelError

    logic = mafm3_slicer.MAFM3SlicerLogic()
    logic.temporaryDir = str(tmp_path)
    torch_loaded_too_old = dependency_status(
        mafm3_slicer.MODULE_DIR,
        installed={**installed_distributions(), "torch": "2.0.0"},
        loaded_modules={"torch": object()},
    )

    with pytest.raises(PanelError, match="restart Slicer, then press Apply again"):
        logic.startInstall(torch_loaded_too_old)

    assert logic.install is None and not logic.installing and list(tmp_path.iterdir()) == []
