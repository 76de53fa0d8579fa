"""The catalogue of inputs broken in ways a reader does not see, each made in the test from a tiny demo study.

Every entry is either refused with one sentence (and `--out` is not created), or gives a result whose
`result.json` and report carry the named warning; where the repair should recover the intact anatomy, its
labels are compared in physical space (nearest neighbour onto the intact run's grid) with the labels of the
same skill on the intact study: identical where the repaired input is the intact one voxel for voxel, else a
GTVp Dice bound. The skill is the shipped `demo-seg-petct`, run with overlap 0 on CPU in fp32 (the runs
compare with each other, so fewer windows suffice). README "Errors" lists this table.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from pathlib import Path

import broken_inputs as broken
import numpy as np
import pytest
import SimpleITK as sitk

from mafm3.demo.study import generate_study
from mafm3.demo.writers import write_study
from mafm3.engine import Engine, RunRequest
from mafm3.errors import MAFM3Error

SKILL = "demo-seg-petct"
SAME = "identical"


@dataclass(frozen=True)
class Entry:
    """One broken input: its maker (`broken_inputs`), and either the refusal's pattern, or the warning's
    pattern (None: no warning) and what its labels must match (SAME, a GTVp Dice bound, or None: not
    compared, the input is wrong in a way no reader can undo)."""

    name: str
    make: object
    refused: str | None = None
    warning: str | None = None
    labels: str | float | None = None


CATALOGUE = [
    Entry(
        "duplicated slice", broken.duplicated_slice, warning=r"1 duplicated slice\(s\).*ignored", labels=SAME
    ),
    Entry(
        "conflicting duplicate",
        broken.conflicting_slices,
        refused="two different slices at the same position",
    ),
    Entry(
        "one missing slice",
        broken.missing_slices(1),
        warning=r"1 missing slice\(s\): it was resampled",
        labels=0.95,
    ),
    Entry(
        "ten missing slices",
        broken.missing_slices(10),
        refused=r"a gap of 44\.0 mm .* export the complete series",
    ),
    Entry("uneven spacing 4 then 6 mm", broken.uneven_spacing, warning="uneven slice spacing", labels=0.9),
    Entry("gantry tilt 15 degrees", broken.gantry_tilt, warning="gantry tilt of 15.0 degrees", labels=0.85),
    Entry("MR given as one DICOM file", broken.mr_as_one_file, refused="is MR, not a CT"),
    Entry(
        "larger CT of another study beside",
        broken.larger_ct_of_another_study,
        warning="holds 2 CT series; the CT series of the PET's study",
        labels=SAME,
    ),
    Entry("PET of another study", broken.pet_of_another_study, refused="come from different studies"),
    Entry(
        "CT with 0.2 % NaN/inf", broken.ct_with_nan(0.002), warning="The CT had .* not numbers", labels=0.95
    ),
    Entry(
        "CT with 5 % NaN/inf", broken.ct_with_nan(0.05), refused=r"The CT has .* \(5\.0 %\) .* not numbers"
    ),
    Entry("PET with 0.5 % NaN/inf", broken.pet_with_nan, warning="The PET had .* not numbers", labels=0.95),
    Entry("PET shifted 20 mm", broken.pet_shifted(20), warning=r"best when shifted by \(\+0, \+0, -24\) mm"),
    Entry("PET shifted 100 mm", broken.pet_shifted(100), warning="share only 64 %"),
    Entry("oblique CT 20/10 degrees", broken.oblique_ct, labels=0.75),
    Entry(
        "clinical file in Latin-1", broken.clinical(b'{"sex": "M", "t_stage": "T2\xe9"}'), refused="not UTF-8"
    ),
    Entry(
        "clinical file with a BOM", broken.clinical(b'\xef\xbb\xbf{"sex": "F", "t_stage": "T2"}'), labels=SAME
    ),
    Entry(
        "stage T9 and sex frog",
        broken.clinical({"t_stage": "T9", "sex": "frog"}),
        refused=r"`t_stage` must be an AJCC stage .* got 'T9'\. Clinical field `sex` must be .* got 'frog'\.",
    ),
    Entry("--sw-batch-size 0", broken.request_fields(sw_batch_size=0), refused="at least 1 window per pass"),
    Entry(
        "--sw-batch-size -2", broken.request_fields(sw_batch_size=-2), refused="at least 1 window per pass"
    ),
    Entry("--out inside a file", broken.out_inside_a_file, refused="cannot be written"),
]


def _params():
    for entry in CATALOGUE:
        marks = () if entry.refused else pytest.mark.slow  # a result costs a model run
        yield pytest.param(entry, id=entry.name, marks=marks)


@pytest.fixture(scope="module")
def demo_study(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("demo") / "study"
    write_study(generate_study(3, size="tiny"), folder)
    return folder


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine("cpu")


def _request(fields: dict) -> RunRequest:
    return RunRequest(skills=[SKILL], overlap=0.0, device="cpu", precision="fp32", **fields)


@pytest.fixture(scope="module")
def intact_labels(demo_study, engine, tmp_path_factory) -> sitk.Image:
    folder = tmp_path_factory.mktemp("intact")
    result, _ = engine.run_and_write(_request(broken.intact(demo_study, folder)), folder / "out")
    assert result.warnings == []
    assert (
        result.segmentation.volumes_ml()["GTVp"] > 5.0
    )  # the skill finds the tumour: a meaningful reference
    return result.segmentation.labels


def _gtvp_dice(labels: sitk.Image, reference: sitk.Image) -> float:
    on_reference = sitk.Resample(labels, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    a, b = sitk.GetArrayViewFromImage(on_reference) == 1, sitk.GetArrayViewFromImage(reference) == 1
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


@pytest.mark.parametrize("entry", _params())
def test_a_broken_input_is_refused_in_one_sentence_or_repaired_and_said(
    entry, demo_study, engine, tmp_path, request
):
    fields = entry.make(demo_study, tmp_path)
    out = Path(fields.pop("out_parent", tmp_path)) / "out"
    if entry.refused:
        with pytest.raises(MAFM3Error) as refusal:
            engine.run_and_write(_request(fields), out)
        message = str(refusal.value)
        assert re.search(entry.refused, message), message
        assert "\n" not in message and message.endswith(".") and "Traceback" not in message
        assert not out.exists()
        return
    reference = request.getfixturevalue("intact_labels")
    result, _ = engine.run_and_write(_request(fields), out)
    written = json.loads((out / "result.json").read_text())
    assert written["warnings"] == result.warnings
    if entry.warning is None:
        assert result.warnings == []
    else:
        assert any(re.search(entry.warning, warning) for warning in result.warnings), result.warnings
        report = (out / "report.html").read_text()
        assert all(html.escape(warning) in report for warning in result.warnings)
    labels = result.segmentation.labels
    if entry.labels == SAME:
        assert labels.GetSize() == reference.GetSize() and labels.GetOrigin() == reference.GetOrigin()
        np.testing.assert_array_equal(
            sitk.GetArrayViewFromImage(labels), sitk.GetArrayViewFromImage(reference)
        )
    elif entry.labels is not None:
        assert _gtvp_dice(labels, reference) >= entry.labels


@pytest.mark.parametrize("flag", ["dicom_seg", "rtstruct", "sr"])
def test_dicom_outputs_of_a_resampled_series_are_refused_before_any_inference(
    flag, demo_study, engine, tmp_path, monkeypatch
):
    """A DICOM SEG, RTSTRUCT or SR must lie on the CT's own slices; a series with a missing slice is
    resampled, so asking for one is refused after reading the study and before the model runs."""
    fields = broken.missing_slices(1)(demo_study, tmp_path)

    def no_inference(*args, **kwargs):
        raise AssertionError("the skills ran although the request could not be written")

    monkeypatch.setattr(Engine, "run", no_inference)
    with pytest.raises(MAFM3Error, match="must lie on the CT's own slices") as refusal:
        engine.run_and_write(_request(fields), tmp_path / "out", **{flag: True})
    assert "\n" not in str(refusal.value)
    assert not (tmp_path / "out").exists()
