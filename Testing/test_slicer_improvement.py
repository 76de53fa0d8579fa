"""MAFM3SlicerLib.improvement reads the comparison the core writes (`mafm3.training.improve`: per-class
summaries of `training.metrics`, the paired change, the gate), and shows every number with its interval."""

import json
import math

import numpy as np
import pytest

from mafm3.training.improve import gate, paired_difference
from mafm3.training.metrics import segmentation_summary
from MAFM3SlicerLib.improvement import Improvement, effort_lines

# Held-out cases: Dice and HD95 per class; GTVn is absent from every case (Dice undefined, as the core
# computes it for two empty masks).
DICE = {"current": [0.50, 0.60, 0.40, 0.70], "new": [0.60, 0.70, 0.55, 0.72]}
HD95_MM = {"current": [12.0, 8.0, 20.0, 6.0], "new": [9.0, 7.0, 11.0, 6.5]}


def rows(version: str) -> list[dict]:
    """Per-case rows as `training.metrics.segmentation_case_metrics` makes them (voxel counts fitting the
    Dice: 100 reference voxels, as many predicted)."""
    made = []
    for case, (dice, hd95) in enumerate(zip(DICE[version], HD95_MM[version], strict=True)):
        made.append(
            {
                "case_id": f"HN-{case}",
                "GTVp_dice": dice,
                "GTVp_hd95_mm": hd95,
                "GTVp_intersection_voxels": round(100 * dice),
                "GTVp_prediction_voxels": 100,
                "GTVp_reference_voxels": 100,
                "GTVn_dice": math.nan,
                "GTVn_hd95_mm": math.nan,
                "GTVn_intersection_voxels": 0,
                "GTVn_prediction_voxels": 0,
                "GTVn_reference_voxels": 0,
            }
        )
    return made


def worker_record(new_dice=None) -> dict:
    """The worker's `improve` result as the core builds it, as JSON (NaN included, as the worker sends it)."""
    per_case = {"current": rows("current"), "new": rows("new")}
    if new_dice is not None:
        for row, dice in zip(per_case["new"], new_dice, strict=True):
            row["GTVp_dice"] = dice
    metrics = {version: segmentation_summary(per_case[version], n_resamples=300) for version in per_case}
    difference = {
        name: paired_difference(per_case["current"], per_case["new"], name, n_resamples=300)
        for name in ("GTVp", "GTVn")
    }
    comparison = {
        "skill": "demo-seg-ct",
        "versions": {
            "current": {"id": "demo-seg-ct", "version": "1.0.0"},
            "new": {"id": "demo-seg-ct", "version": "1.1.0"},
        },
        "scheme": "holdout",
        "held_out_case_ids": [row["case_id"] for row in per_case["current"]],
        "metrics": metrics,
        "per_case": per_case,
        "difference": difference,
        "gate": gate(metrics, difference),
    }
    record = {"comparison": comparison, "pack": "/tmp/job/out", "installed": False, "message": "sentence."}
    return json.loads(json.dumps(record, default=str))


def test_each_class_shows_both_versions_and_the_change_with_their_intervals():
    record = worker_record()
    improvement = Improvement.from_record(record)

    assert (improvement.skill_id, improvement.current_version, improvement.new_version) == (
        "demo-seg-ct",
        "1.0.0",
        "1.1.0",
    )
    assert improvement.not_worse and improvement.held_out_cases == 4 and improvement.message == "sentence."
    gtvp, gtvn = improvement.classes
    assert gtvp.dice["current"].value == pytest.approx(np.mean(DICE["current"]))
    assert gtvp.dice["new"].value == pytest.approx(np.mean(DICE["new"]))
    assert gtvp.dice_change.value == pytest.approx(np.mean(np.subtract(DICE["new"], DICE["current"])))
    assert gtvp.hd95_mm["new"].value == pytest.approx(np.mean(HD95_MM["new"]))
    metrics = record["comparison"]["metrics"]["new"]["classes"]["GTVp"]
    assert (gtvp.dice["new"].low, gtvp.dice["new"].high) == (
        metrics["dice_mean_ci"]["low"],
        metrics["dice_mean_ci"]["high"],
    )
    shown = improvement.html()
    dice_new = gtvp.dice["new"]
    assert f"<td>{dice_new.value:.3f} ({dice_new.low:.3f} to {dice_new.high:.3f})</td>" in shown
    change = gtvp.dice_change
    assert f"<td>+{change.value:.3f} ({change.low:+.3f} to {change.high:+.3f})</td>" in shown
    hd95 = gtvp.hd95_mm["current"]
    assert hd95.low is not None and f"<td>{hd95.value:.1f} ({hd95.low:.1f} to {hd95.high:.1f})</td>" in shown
    assert gtvn.dice["current"].value is None  # no case with a GTVn: shown as n/a, never as 0
    assert "<tr><td>GTVn</td><td>n/a</td><td>n/a</td><td>n/a</td><td>n/a</td><td>n/a</td></tr>" in shown
    assert "on 4 held-out cases never trained on" in shown and "Not worse" in shown
    # The core's sentence tells how to install on the command line; the panel asks instead.
    assert "sentence." not in shown
    assert improvement.summary == "demo-seg-ct 1.1.0 is not worse than 1.0.0 on 4 held-out cases."


def test_a_worse_version_is_shown_with_the_gates_reasons():
    improvement = Improvement.from_record(worker_record(new_dice=[0.2, 0.3, 0.1, 0.25]))

    assert not improvement.not_worse
    assert "mean Dice over classes fell from 0.550 to 0.212" in improvement.reasons[0]
    assert "Worse: mean Dice over classes fell from 0.550 to 0.212" in improvement.html()
    assert improvement.summary == "sentence." and "sentence." in improvement.html()


def test_a_result_without_the_versions_is_refused_as_incompatible():
    with pytest.raises(KeyError):
        Improvement.from_record({"comparison": {"metrics": {}}, "pack": "/tmp/p"})


def test_the_panels_improve_request_is_one_the_cores_improve_takes(tmp_path):
    from mafm3.training.improve import DEFAULT_HOLDOUT, ImproveOptions
    from MAFM3SlicerLib.jobs import prepare_improvement

    params, folder = prepare_improvement(
        "demo-seg-ct", "1.0.0", tmp_path, iterations=200, holdout=0.3, device="cpu", parent_dir=tmp_path
    )
    options = ImproveOptions(**params)  # what the worker builds from the request (unknown fields refused)

    assert (options.skill, options.dataset, options.out) == ("demo-seg-ct@1.0.0", tmp_path, folder / "out")
    assert (options.iterations, options.holdout, options.device, options.install) == (200, 0.3, "cpu", False)
    defaults = ImproveOptions(**prepare_improvement("demo-seg-ct", "1.0.0", tmp_path, parent_dir=tmp_path)[0])
    assert (defaults.iterations, defaults.holdout, defaults.device) == (None, DEFAULT_HOLDOUT, "auto")


def test_the_effort_of_a_version_without_a_defined_dice_or_time_reads_n_a():
    info = {
        "with_label": 3,
        "corrections": {
            "cases_with_record": 1,
            "by_skill_version": {
                "seg@2.0.0": {
                    "cases": 1,
                    "mean_editing_seconds": None,
                    "GTVp": {"mean_dice_prediction_vs_correction": 0.8125},
                    "GTVn": {"mean_dice_prediction_vs_correction": None},
                }
            },
        },
    }
    assert effort_lines(info) == [
        "3 cases labelled, 1 with a correction record.",
        "seg 2.0.0: 1 case, Dice of prediction vs correction GTVp 0.812, GTVn n/a.",
    ]
