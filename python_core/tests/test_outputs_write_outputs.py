"""`write_outputs`: all files or none; an existing output folder stays untouched until the new one is done."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import SimpleITK as sitk

import mafm3.outputs
from mafm3.errors import MAFM3Error
from mafm3.outputs import check_output_dir, write_outputs
from mafm3.results import GTVN, GTVP, PrognosisResult, SegmentationResult, StudyResult


@pytest.fixture(scope="module")
def ct() -> sitk.Image:
    hu = np.full((10, 24, 28), -1000, dtype=np.int16)
    hu[1:9, 4:20, 4:24] = 40
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((1.5, 1.5, 3.0))
    return image


def _study(ct: sitk.Image, *, segmentation=True) -> StudyResult:
    labels = np.zeros(ct.GetSize()[::-1], dtype=np.uint8)
    labels[3:6, 8:14, 10:18] = GTVP.label
    labels[4:6, 15:18, 5:8] = GTVN.label
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(ct)
    return StudyResult(
        inputs={"ct": "ct.nii.gz"},
        segmentation=SegmentationResult(label_image, [GTVP, GTVN], "seg", "1.0") if segmentation else None,
        prognosis=PrognosisResult(
            0.1, "low", [0.0, 365.0, 1825.0], [1.0, 0.9, 0.8], {1: 0.9, 5: 0.8}, "rfs", "1.0"
        ),
        device="cpu",
    )


def _snapshot(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_all_outputs_are_written_and_listed_in_result_json(tmp_path, ct):
    out = tmp_path / "out"
    written = write_outputs(_study(ct), out, ct)

    expected = [
        "segmentation.seg.nrrd",
        "labels.nii.gz",
        "prognosis.json",
        "report.html",
        "ct_overlay.png",
        "survival_curve.png",
        "result.json",
    ]
    assert [p.name for p in written] == expected
    assert all(p.parent == out for p in written)
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)
    assert json.loads((out / "result.json").read_text())["outputs"] == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left


def test_a_failing_writer_leaves_no_output_folder_and_no_staging_folder(tmp_path, ct, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("disk exploded")

    monkeypatch.setattr(mafm3.outputs, "write_report_html", fail)
    with pytest.raises(RuntimeError, match="disk exploded"):
        write_outputs(_study(ct), tmp_path / "out", ct)
    assert list(tmp_path.iterdir()) == []


def test_a_failing_overwrite_leaves_the_existing_folder_untouched(tmp_path, ct, monkeypatch):
    out = tmp_path / "out"
    write_outputs(_study(ct), out, ct)
    before = _snapshot(out)

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mafm3.outputs, "write_result_json", fail)
    with pytest.raises(MAFM3Error, match="No space left on device.*was left as it was"):
        write_outputs(_study(ct, segmentation=False), out, ct, overwrite=True)
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_non_empty_output_folder_is_refused_before_anything_is_written(tmp_path, ct):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(MAFM3Error, match="is not empty; choose another folder or pass --overwrite"):
        write_outputs(_study(ct), out, ct)
    assert _snapshot(out) == {"notes.txt": b"mine"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_overwrite_replaces_the_folder_with_exactly_the_new_outputs(tmp_path, ct):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("old")
    written = write_outputs(_study(ct, segmentation=False), out, ct, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written)
    assert "notes.txt" not in {p.name for p in written}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_empty_existing_folder_is_filled(tmp_path, ct):
    out = tmp_path / "out"
    out.mkdir()
    written = write_outputs(_study(ct, segmentation=False), out, ct)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written)


def test_an_output_path_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(MAFM3Error, match="is a file; choose a folder for --out"):
        check_output_dir(tmp_path / "out", overwrite=True)


def test_dicom_seg_without_a_dicom_ct_is_refused_and_nothing_is_written(tmp_path, ct):
    with pytest.raises(MAFM3Error, match="DICOM SEG needs a DICOM CT input"):
        write_outputs(_study(ct), tmp_path / "out", ct, dicom_seg=True)
    assert list(tmp_path.iterdir()) == []


def test_dicom_seg_without_a_segmentation_is_refused(tmp_path, ct):
    with pytest.raises(MAFM3Error, match="DICOM SEG needs a segmentation result"):
        write_outputs(_study(ct, segmentation=False), tmp_path / "out", ct, dicom_seg=True)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_the_output_folder_gets_the_mode_of_the_umask(tmp_path, ct, umask):
    previous = os.umask(umask)
    try:
        write_outputs(_study(ct, segmentation=False), tmp_path / "out", ct)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o777 & ~umask  # as `mkdir` would make it


def test_an_output_folder_that_cannot_be_created_is_refused_before_any_work(tmp_path):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    with pytest.raises(
        MAFM3Error, match=r"^The output folder .*notes\.txt/out cannot be written \(.*notes\.txt:"
    ):
        check_output_dir(tmp_path / "notes.txt" / "out")
    assert [path.name for path in tmp_path.iterdir()] == ["notes.txt"]  # the check leaves nothing behind


def test_warnings_are_written_to_result_json_and_shown_first_in_the_report(tmp_path, ct):
    study = _study(ct)
    study.warnings = [
        "The CT series held 1 duplicated slice(s) (same position, identical pixels); ignored.",
        "B <2>.",
    ]
    write_outputs(study, tmp_path / "out", ct)
    assert json.loads((tmp_path / "out" / "result.json").read_text())["warnings"] == study.warnings
    report = (tmp_path / "out" / "report.html").read_text()
    shown = report.index("<h2>Warnings</h2>")
    assert shown < report.index("<h2>Images</h2>") and "B &lt;2&gt;." in report[shown:]
    assert "1 duplicated slice(s)" in report[shown:]
