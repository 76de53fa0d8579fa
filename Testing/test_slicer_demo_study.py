"""The demo PET/CT study: made by the core in a child process, or shipped with the module (what SampleData
offers before anything is installed), loaded under its own patient and study."""

import hashlib
import json
import sys
import types
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer

from MAFM3SlicerLib.clinical import clinical_record, panel_problems, panel_values
from MAFM3SlicerLib.demo_study import (
    CLINICAL_ATTRIBUTE,
    SAMPLE_NAME,
    SHIPPED_CT,
    clinical_record_of,
    load_demo_study,
    load_shipped_demo_study,
    make_demo_study,
    sample_data_source,
    shipped_study_folder,
    verify_shipped_study,
)
from MAFM3SlicerLib.errors import PanelError

MODULE_DIR = Path(__file__).resolve().parent.parent / "MAFM3Slicer"


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


def test_a_number_the_panel_cannot_hold_is_left_unknown_and_reported():
    record = {"age": 150, "weight": -3.0, "sex": "F"}
    assert (panel_values(record)["age"], panel_values(record)["weight"]) == (0.0, 0.0)
    assert [problem.split(" (")[0] for problem in panel_problems(record)] == [
        "The study's age",
        "The study's weight",
    ]
    assert panel_problems({"age": 120, "weight": 300.0}) == []


def test_the_study_is_registered_with_sample_data_when_slicer_has_it(mafm3_slicer, monkeypatch):
    mafm3_slicer.registerSampleData()  # no SampleData module here: nothing to do, and no error
    registered = []

    def register_custom_sample_data_source(  # the keywords of Slicer 5.10's SampleDataLogic method
        category="Custom",
        sampleName=None,
        uris=None,
        fileNames=None,
        nodeNames=None,
        customDownloader=None,
        thumbnailFileName=None,
        loadFileTypes=None,
        loadFiles=None,
        loadFileProperties=None,
        checksums=None,
        loadFileType=None,
    ):
        registered.append(dict(locals()))

    sample_data = types.ModuleType("SampleData")
    sample_data.SampleDataLogic = types.SimpleNamespace(
        registerCustomSampleDataSource=register_custom_sample_data_source
    )
    monkeypatch.setitem(sys.modules, "SampleData", sample_data)

    mafm3_slicer.registerSampleData()

    (source,) = registered
    assert (source["category"], source["sampleName"]) == ("MAFM3", SAMPLE_NAME)
    assert (
        len(source["uris"])
        == len(source["fileNames"])
        == len(source["nodeNames"])
        == len(source["checksums"])
        == 2
    )
    assert callable(source["customDownloader"])  # the button's loader; downloadSample(name) reads the files
    assert source["thumbnailFileName"].endswith("MAFM3Slicer.png")


def test_downloading_the_sample_by_name_reads_the_shipped_files_and_their_checksums_hold(
    mrml_scene, tmp_path
):
    """What `SampleData.downloadSample(SAMPLE_NAME)` does with a registered source (Slicer's SampleData.py):
    urlretrieve each URI into its cache under the file name, compare "SHA256:<hex>" with the checksum, load
    each file as a volume named by nodeNames. No custom loader is involved, and nothing needs installing."""
    source = sample_data_source(MODULE_DIR)
    loaded = []
    for uri, name, node_name, checksum, file_type in zip(
        source["uris"],
        source["fileNames"],
        source["nodeNames"],
        source["checksums"],
        source["loadFileTypes"],
        strict=True,
    ):
        cached = tmp_path / name
        urllib.request.urlretrieve(uri, cached)
        assert checksum == "SHA256:" + hashlib.sha256(cached.read_bytes()).hexdigest()
        assert file_type == "VolumeFile"
        # Slicer's loadNode -> the Volumes logic's archetype reader, which keeps a storage node on the file.
        loaded.append(slicer.modules.volumes.logic().AddArchetypeVolume(str(cached), node_name))

    ct, pet = loaded
    assert slicer.util.arrayFromVolume(ct).min() <= -1000 < 0 < slicer.util.arrayFromVolume(pet).max()
    # The panel finds the study's clinical record for the CT SampleData loaded (not for any other CT).
    assert clinical_record_of(ct, MODULE_DIR) == json.loads(
        (shipped_study_folder(MODULE_DIR) / "clinical.json").read_text()
    )
    assert Path(ct.GetStorageNode().GetFileName()).name == SHIPPED_CT
    assert clinical_record_of(pet, MODULE_DIR) is None


def test_the_shipped_study_is_the_cores_demo_study_seed_0_tiny(tmp_path, mrml_scene):
    made = make_demo_study(sys.executable, tmp_path / "made", seed=0, size="tiny")
    shipped = load_shipped_demo_study(MODULE_DIR, mrml_scene)

    for node, made_file in ((shipped.ct, "ct.nii.gz"), (shipped.pet, "pet.nii.gz")):
        image = sitk.ReadImage(str(made / made_file))
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), sitk.GetArrayFromImage(image))
    assert shipped.clinical == json.loads((made / "clinical.json").read_text())


def test_a_damaged_shipped_study_is_refused_in_one_sentence(tmp_path):
    module_copy = tmp_path / "MAFM3Slicer"
    folder = shipped_study_folder(module_copy)
    folder.mkdir(parents=True)
    for file in shipped_study_folder(MODULE_DIR).iterdir():
        folder.joinpath(file.name).write_bytes(file.read_bytes())
    verify_shipped_study(module_copy)
    (folder / SHIPPED_CT).write_bytes((folder / SHIPPED_CT).read_bytes()[:-10])  # cut off

    with pytest.raises(PanelError, match="is missing or damaged; reinstall the MAFM3 extension"):
        verify_shipped_study(module_copy)
