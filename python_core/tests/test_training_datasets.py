"""HECKTOR 2022 folders and datalists read as written by hand; `mafm3 dataset add-case` grows them safely.

Precision: numpy and SimpleITK only (no torch, so no autocast); geometry in float64, tolerances in the units
each assertion names.
"""

import csv
import json
import math
import os
import stat

import numpy as np
import pytest
import SimpleITK as sitk

from mafm3.cli import main
from mafm3.clinical import ClinicalRecord
from mafm3.errors import MAFM3Error
from mafm3.training.datasets import CaseCache, load_cohort, read_datalist, read_hecktor

COS, SIN = math.cos(math.radians(30)), math.sin(math.radians(30))
DIRECTION = (COS, -SIN, 0.0, SIN, COS, 0.0, 0.0, 0.0, 1.0)  # oblique: rotated 30 degrees about z


def write_image(path, array, spacing=(0.9, 1.1, 3.0), origin=(-10.0, 20.5, 7.25), direction=DIRECTION):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


SHAPE_ZYX = (16, 17, 18)  # the smallest volumes mafm3 accepts are 16 voxels per axis


def ct_array():
    return (np.arange(np.prod(SHAPE_ZYX)).reshape(SHAPE_ZYX) - 1024).astype(np.int16)  # -1024 HU upwards


def label_array():
    label = np.zeros(SHAPE_ZYX, np.uint8)
    label[1, 1:3, 1:3] = 1
    label[2, 3, 4] = 2
    return label


def write_csv(path, rows):
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


CLINICAL_HEADER = ["PatientID", "Task 1", "CenterID", "Gender", "Age", "Weight", "Tobacco", "Alcohol",
                   "Performance status", "HPV status (0=-, 1=+)", "Surgery", "Chemotherapy"]  # fmt: skip


@pytest.fixture
def hecktor(tmp_path):
    root = tmp_path / "hecktor2022"
    for case_id in ("CHUM-001", "MDA-002", "P7"):
        write_image(root / "imagesTr" / f"{case_id}__CT.nii.gz", ct_array())
    write_image(root / "imagesTr" / "CHUM-001__PT.nii.gz", np.ones((16, 16, 16), np.float32))
    write_image(root / "labelsTr" / "CHUM-001.nii.gz", label_array())
    write_image(root / "labelsTr" / "MDA-002_label.nii.gz", label_array())
    endpoints = [{"PatientID": "CHUM-001", "Relapse": "1", "RFS": "400"}]
    endpoints.append({"PatientID": "MDA-002", "Relapse": "0", "RFS": "1200.5"})
    write_csv(root / "hecktor2022_endpoint_training.csv", endpoints)
    rows = [
        ["CHUM-001", "1", "3", "M", "61", "", "1", "NaN", "1.0", "1", "0", "1"],
        ["MDA-002", "1", "", "F", "55.5", "70", "0", "1", "", "0", "1", "0"],
        ["P7", "0", "SiteA", "", "", "", "", "", "", "", "", ""],
        ["CHUS-099", "1", "4", "M", "70", "80", "1", "1", "0", "1", "1", "1"],  # no images: ignored
    ]
    write_csv(
        root / "hecktor2022_clinical_info_training.csv",
        [dict(zip(CLINICAL_HEADER, r, strict=True)) for r in rows],
    )
    return root


def test_hecktor_folder_is_read_with_files_endpoints_clinical_codes_and_centres(hecktor):
    cohort = load_cohort(hecktor)
    assert cohort.layout == "hecktor" and [c.case_id for c in cohort] == ["CHUM-001", "MDA-002", "P7"]
    chum, mda, p7 = cohort.cases
    assert chum.pet == hecktor / "imagesTr" / "CHUM-001__PT.nii.gz" and mda.pet is None and p7.pet is None
    assert chum.label == hecktor / "labelsTr" / "CHUM-001.nii.gz"
    assert mda.label == hecktor / "labelsTr" / "MDA-002_label.nii.gz" and p7.label is None
    assert (chum.rfs_days, chum.relapse, mda.rfs_days, mda.relapse) == (400.0, True, 1200.5, False)
    assert not p7.has_endpoint
    assert chum.clinical == ClinicalRecord(
        age=61.0, sex="M", tobacco=True, performance_status=1, hpv=True, surgery=False, chemotherapy=True
    )
    assert mda.clinical == ClinicalRecord(
        age=55.5,
        sex="F",
        weight=70.0,
        tobacco=False,
        alcohol=True,
        hpv=False,
        surgery=True,
        chemotherapy=False,
    )
    assert p7.clinical is None
    # A numeric CenterID code gives way to the ID prefix; a CenterID name wins.
    assert (chum.centre, mda.centre, p7.centre) == ("CHUM", "MDA", "SiteA")
    assert cohort.summary() == {
        "source": str(hecktor),
        "layout": "hecktor",
        "cases": 3,
        "with_pet": 1,
        "with_label": 2,
        "with_clinical": 2,
        "with_endpoint": 2,
        "events": 1,
        "centres": {"CHUM": 1, "MDA": 1, "SiteA": 1},
    }
    assert [c.case_id for c in cohort.labelled()] == ["CHUM-001", "MDA-002"]
    assert [c.case_id for c in cohort.select(["P7", "CHUM-001"])] == ["P7", "CHUM-001"]


def test_endpoint_rows_without_images_are_reported_with_the_first_missing_file_and_count(hecktor):
    path = hecktor / "hecktor2022_endpoint_training.csv"
    path.write_text(path.read_text() + "HGJ-010,1,300\nHGJ-011,0,900\n")
    with pytest.raises(
        MAFM3Error, match=r"^2 file\(s\) of the dataset .* missing, the first is .*HGJ-010__CT"
    ):
        read_hecktor(hecktor)


def test_two_endpoint_csvs_are_refused_unless_one_is_named(hecktor):
    (hecktor / "old_endpoint.csv").write_text("PatientID,Relapse,RFS\n")
    with pytest.raises(MAFM3Error, match="holds 2 endpoint CSVs"):
        read_hecktor(hecktor)
    named = read_hecktor(hecktor, endpoint_csv=hecktor / "hecktor2022_endpoint_training.csv")
    assert named.summary()["with_endpoint"] == 2


def test_datalist_paths_resolve_against_the_json_folder_and_other_values_stay_values(tmp_path):
    data = tmp_path / "data"
    write_image(data / "a_ct.nii.gz", ct_array())
    write_image(data / "a_pet.nii.gz", np.ones((16, 16, 16), np.float32))
    write_image(data / "a_seg.nii.gz", label_array())
    write_image(data / "b_ct.nii.gz", ct_array())
    (tmp_path / "lists" / "MDA").mkdir(parents=True)  # a folder named like a centre must not become a path
    datalist = {
        "training": [
            {"image": ["../data/a_ct.nii.gz", "../data/a_pet.nii.gz"], "label": "../data/a_seg.nii.gz",
             "id": "A", "centre": "MDA", "relapse": 1, "rfs": 321, "clinical": {"age": 50, "hpv": True}},
            {"image": "../data/b_ct.nii.gz"},
        ]
    }  # fmt: skip
    (tmp_path / "lists" / "datalist.json").write_text(json.dumps(datalist))
    cohort = load_cohort(tmp_path / "lists" / "datalist.json")
    a, b = cohort.cases
    assert (a.case_id, a.ct, a.pet, a.label) == (
        "A",
        data / "a_ct.nii.gz",
        data / "a_pet.nii.gz",
        data / "a_seg.nii.gz",
    )
    assert (a.centre, a.relapse, a.rfs_days, a.clinical) == (
        "MDA",
        True,
        321.0,
        ClinicalRecord(age=50.0, hpv=True),
    )
    assert (b.case_id, b.pet, b.label, b.has_endpoint) == ("b_ct", None, None, False)


def test_datalist_with_missing_files_names_the_first_and_counts_them(tmp_path):
    datalist = {"training": [{"image": "x.nii.gz", "label": "x_seg.nii.gz"}]}
    (tmp_path / "d.json").write_text(json.dumps(datalist))
    with pytest.raises(MAFM3Error, match=r"^2 file\(s\) .* the first is .*x\.nii\.gz"):
        read_datalist(tmp_path / "d.json")


def test_case_cache_recomputes_only_when_the_config_or_a_source_file_changes(hecktor, tmp_path):
    case = read_hecktor(hecktor).select(["CHUM-001"])[0]
    cache, calls = CaseCache(tmp_path / "cache"), []

    def preprocess(c):
        calls.append(c.case_id)
        return {"image": sitk.GetArrayFromImage(sitk.ReadImage(str(c.ct))).astype(np.float32) / 1000}

    first = cache.get_or_create(case, {"spacing_mm": [1, 1, 1]}, preprocess)
    second = cache.get_or_create(case, {"spacing_mm": [1, 1, 1]}, preprocess)
    assert calls == ["CHUM-001"] and np.array_equal(first["image"], second["image"])
    assert len(list((tmp_path / "cache" / "CHUM-001").glob("*.safetensors"))) == 1
    cache.get_or_create(case, {"spacing_mm": [2, 2, 2]}, preprocess)
    assert len(calls) == 2
    write_image(case.ct, ct_array() + 1, origin=(0.0, 0.0, 0.0))  # an edited case
    cache.get_or_create(case, {"spacing_mm": [1, 1, 1]}, preprocess)
    assert len(calls) == 3


def test_content_hash_follows_the_image_bytes_not_the_case_id(hecktor, tmp_path):
    cases = {case.case_id: case for case in read_hecktor(hecktor)}
    # MDA-002 and P7 hold the same CT bytes; MDA-002 also has a label, P7 none.
    assert cases["MDA-002"].content_sha256() != cases["P7"].content_sha256()
    copy = tmp_path / "copy"
    for case in cases.values():  # the same files under other ids, in another folder
        for path in case.files():
            target = copy / path.parent.name / path.name.replace(case.case_id, f"X{case.case_id}")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    copied = {case.case_id: case for case in read_hecktor(copy)}
    assert {f"X{i}": case.content_sha256() for i, case in cases.items()} == {
        i: case.content_sha256() for i, case in copied.items()
    }
    write_image(cases["P7"].ct, ct_array() + 1)  # same id, other content
    assert read_hecktor(hecktor).select(["P7"])[0].content_sha256() != copied["XP7"].content_sha256()


def add_case_args(dataset, ct, label, *extra):
    return ["dataset", "add-case", "--dataset", str(dataset), "--ct", str(ct), "--label", str(label), *extra]


def test_add_case_creates_a_new_dataset_keeping_geometry_and_writes_the_csv_rows(tmp_path, capsys):
    ct = write_image(tmp_path / "in" / "ct.nrrd", ct_array())
    label = write_image(tmp_path / "in" / "seg.nrrd", label_array().astype(np.int16))
    pet = write_image(
        tmp_path / "in" / "pet.nrrd", np.ones((16, 16, 16), np.float32), spacing=(4.0, 4.0, 4.0)
    )
    (tmp_path / "in" / "clinical.json").write_text(json.dumps({"age": 64, "sex": "F", "hpv": True}))
    dataset = tmp_path / "new"
    extra = ["--pet", str(pet), "--clinical", str(tmp_path / "in" / "clinical.json"), "--id", "KIT-001",
             "--rfs", "730", "--relapse", "1", "--centre", "KIT"]  # fmt: skip
    assert main(add_case_args(dataset, ct, label, *extra)) == 0
    assert "added case KIT-001" in capsys.readouterr().out
    stored = sitk.ReadImage(str(dataset / "imagesTr" / "KIT-001__CT.nii.gz"))
    original = sitk.ReadImage(str(ct))
    assert np.array_equal(sitk.GetArrayFromImage(stored), ct_array())
    assert np.allclose(stored.GetOrigin(), original.GetOrigin(), atol=1e-5)
    assert np.allclose(stored.GetDirection(), original.GetDirection(), atol=1e-6)
    assert np.allclose(stored.GetSpacing(), original.GetSpacing(), atol=1e-6)
    umask = os.umask(0)
    os.umask(umask)
    for written in (dataset / "imagesTr" / "KIT-001__CT.nii.gz", dataset / "endpoint.csv"):
        assert stat.S_IMODE(written.stat().st_mode) == 0o666 & ~umask  # readable like any new file
    assert not list(dataset.rglob(".*"))  # no temp files left
    stored_label = sitk.ReadImage(str(dataset / "labelsTr" / "KIT-001.nii.gz"))
    assert stored_label.GetPixelID() == sitk.sitkUInt8
    assert np.array_equal(sitk.GetArrayFromImage(stored_label), label_array())
    case = read_hecktor(dataset).cases[0]
    assert (case.case_id, case.rfs_days, case.relapse, case.centre) == ("KIT-001", 730.0, True, "KIT")
    assert case.clinical == ClinicalRecord(age=64.0, sex="F", hpv=True)
    assert case.pet == dataset / "imagesTr" / "KIT-001__PT.nii.gz"
    assert main(["dataset", "info", str(dataset), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["cases"], summary["with_pet"], summary["events"]) == (1, 1, 1)


def test_a_label_off_the_ct_grid_is_refused_in_one_sentence_and_nothing_is_written(tmp_path, capsys):
    ct = write_image(tmp_path / "ct.nii.gz", ct_array())
    label = write_image(tmp_path / "seg.nii.gz", label_array(), origin=(-10.0, 20.5, 8.25))
    assert main(add_case_args(tmp_path / "ds", ct, label)) == 1
    error = capsys.readouterr().err.strip()
    assert "is not on the CT grid (origin" in error and error.count(". ") == 0 and "\n" not in error
    assert not (tmp_path / "ds").exists()


def test_label_values_outside_background_gtvp_gtvn_are_refused(tmp_path, capsys):
    ct = write_image(tmp_path / "ct.nii.gz", ct_array())
    label = write_image(tmp_path / "seg.nii.gz", label_array() * 2)  # holds 4
    assert main(add_case_args(tmp_path / "ds", ct, label)) == 1
    assert "holds values [0, 2, 4]" in capsys.readouterr().err


def test_an_existing_case_is_kept_unless_overwrite_and_other_rows_and_columns_survive(
    hecktor, tmp_path, capsys
):
    ct = write_image(tmp_path / "CHUM-001__CT.nii.gz", ct_array() + 5)
    label = write_image(tmp_path / "seg.nii.gz", label_array())
    before = (hecktor / "imagesTr" / "CHUM-001__CT.nii.gz").read_bytes()
    assert main(add_case_args(hecktor, ct, label, "--rfs", "50", "--relapse", "0")) == 1
    assert "already exists" in capsys.readouterr().err
    assert (hecktor / "imagesTr" / "CHUM-001__CT.nii.gz").read_bytes() == before

    assert main(add_case_args(hecktor, ct, label, "--rfs", "50", "--relapse", "0", "--overwrite")) == 0
    cohort = read_hecktor(hecktor)
    chum = cohort.select(["CHUM-001"])[0]
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(chum.ct))), ct_array() + 5)
    assert chum.pet is None and not (hecktor / "imagesTr" / "CHUM-001__PT.nii.gz").exists()  # no stale PET
    assert (chum.rfs_days, chum.relapse) == (50.0, False)
    assert chum.clinical is not None and chum.clinical.age == 61.0  # clinical row untouched
    assert cohort.select(["MDA-002"])[0].rfs_days == 1200.5
    with open(hecktor / "hecktor2022_clinical_info_training.csv", newline="") as file:
        assert next(csv.reader(file)) == CLINICAL_HEADER  # HECKTOR's extra column "Task 1" is kept
