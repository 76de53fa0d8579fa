"""The demo PET/CT study: made by the core in a child process, loaded under its own patient and study, and
offered in the SampleData module (when Slicer has it)."""

import json
import sys
import types

import numpy as np
import pytest
import SimpleITK as sitk
import slicer

from MAFM3SlicerLib.clinical import clinical_record, panel_values
from MAFM3SlicerLib.demo_study import CLINICAL_ATTRIBUTE, SAMPLE_NAME, load_demo_study, make_demo_study


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory):
    return make_demo_study(sys.executable, tmp_path_factory.mktemp("demo") / "study", seed=2, size="tiny")


def test_the_demo_study_loads_as_ct_and_pet_under_a_synthetic_patient(demo_folder, mrml_scene):
    study = load_demo_study(demo_folder, mrml_scene)

    assert study.study_id == json.loads((demo_folder / "study.json").read_text())["study_id"]
    assert (study.ct.GetName(), study.pet.GetName()) == (f"{study.study_id} CT", f"{study.study_id} PET")
    expected_ct = sitk.GetArrayFromImage(sitk.ReadImage(str(demo_folder / "ct.nii.gz")))
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(study.ct), expected_ct)
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml_scene)
    study_item = hierarchy.GetItemParent(hierarchy.GetItemByDataNode(study.ct))
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(study.pet)) == study_item
    assert hierarchy.GetItemLevel(study_item) == "Study"
    assert hierarchy.GetItemName(hierarchy.GetItemParent(study_item)) == f"Synthetic patient {study.study_id}"


def test_the_demo_cts_clinical_record_fills_the_panel_and_comes_back_unchanged(demo_folder, mrml_scene):
    study = load_demo_study(demo_folder, mrml_scene)
    record = json.loads(study.ct.GetAttribute(CLINICAL_ATTRIBUTE))
    assert record == json.loads((demo_folder / "clinical.json").read_text()) == study.clinical

    panel = panel_values(record)

    assert clinical_record(panel) == {key: value for key, value in record.items() if value is not None}


def test_a_record_the_panel_cannot_show_leaves_those_fields_unknown():
    panel = panel_values({"age": 64, "sex": "X", "t_stage": "T0", "performance_status": 7, "hpv": None})
    assert (panel["age"], panel["sex"], panel["tStage"], panel["performanceStatus"], panel["hpv"]) == (
        64.0,
        "unknown",
        "unknown",
        "unknown",
        "unknown",
    )


def test_the_study_is_registered_with_sample_data_when_slicer_has_it(mafm3_slicer, monkeypatch):
    mafm3_slicer.registerSampleData()  # no SampleData module here: nothing to do, and no error
    registered = []
    sample_data = types.ModuleType("SampleData")
    sample_data.SampleDataLogic = types.SimpleNamespace(
        registerCustomSampleDataSource=lambda **k: registered.append(k)
    )
    monkeypatch.setitem(sys.modules, "SampleData", sample_data)

    mafm3_slicer.registerSampleData()

    (source,) = registered
    assert (source["category"], source["sampleName"]) == ("MAFM3", SAMPLE_NAME)
    assert source["uris"] == source["fileNames"] == source["nodeNames"] == []  # nothing to download
    assert callable(source["customDownloader"])
    assert source["thumbnailFileName"].endswith("MAFM3Slicer.png")
