"""`mafm3 cohort run` with the local engine: every case, a broken one recorded, resumable, summary, metrics.

Oracles: the network is replaced by a pass-through (the case's own mask in model space, which comes back on
the CT grid exactly, see test_engine) and the risk by the patient's age, so Dice, HD95, volumes and Harrell's
C follow by hand from the masks drawn here and the endpoints written here. Resuming is checked by counting
the cases read and by the result.json modification times.

Precision: fp32, asked for explicitly; the network is a pass-through, so the numbers follow from the masks and
endpoints alone.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cohort_cases import BROKEN, PATIENTS, SKILLS, WITHOUT_NODES, read_summary, write_cohort
from imaging_phantoms import phantom_ct, tumour_mask

import mafm3.cohort
from mafm3.cli import main
from mafm3.cohort import CohortJob, run_cohort
from mafm3.engine import runner as engine_runner
from mafm3.errors import MAFM3Error
from mafm3.imaging.preprocess import to_model_array

GTVP_VOXELS, GTVN_VOXELS = 4 * 6 * 7, 2 * 4 * 4  # the boxes `tumour_mask` draws


@pytest.fixture()
def pass_through(monkeypatch):
    """Segmentation returns the case's mask (all cases share it); the prognosis risk is the patient's age."""
    mask = tumour_mask(phantom_ct())

    def segment(skill, prepared, window, **kwargs):  # labels and a certain (0) uncertainty map
        labels = to_model_array(mask, prepared.grid, prepared.axis_order, "nearest")
        return labels, np.zeros(labels.shape, dtype=np.float32)

    real_prognose = engine_runner.prognose

    def prognose(skill, prepared, record, **kwargs):
        outcome = real_prognose(skill, prepared, record, **kwargs)
        outcome["risk"] = torch.tensor([float(record.age)])
        return outcome

    monkeypatch.setattr(engine_runner, "segment", segment)
    monkeypatch.setattr(engine_runner, "prognose", prognose)


@pytest.fixture()
def reads(monkeypatch) -> list[str]:
    """The ids of the cases read by the cohort engine (a done case is never read again)."""
    seen = []
    real = mafm3.cohort.read_case
    monkeypatch.setattr(mafm3.cohort, "read_case", lambda case: seen.append(case.case_id) or real(case))
    return seen


def cohort_run(dataset: Path, out: Path) -> int:
    """fp32: the network is a pass-through, so the precision policy changes nothing here."""
    command = ["cohort", "run", "--dataset", str(dataset), "--skill", *SKILLS, "--out", str(out)]
    return main([*command, "--precision", "fp32", "--quiet"])


def test_every_case_runs_a_broken_one_is_recorded_and_metrics_are_exact(
    installed_skills,
    pass_through,
    tmp_path,
    capsys,
):
    dataset, out = write_cohort(tmp_path / "cohort"), tmp_path / "out"
    assert cohort_run(dataset, out) == 1  # one case failed: the exit code says so
    summary = read_summary(out)
    assert [row["status"] for row in summary.values()] == ["ok", "ok", "ok", "failed"]
    assert summary[BROKEN]["error"] and not summary["SYN-001"]["error"]
    assert "1 failed" in capsys.readouterr().out
    voxel_ml = np.prod(phantom_ct().GetSpacing()) / 1000
    for case_id in ("SYN-001", "SYN-002", "SYN-003"):
        folder = out / case_id
        assert {"result.json", "labels.nii.gz", "segmentation.seg.nrrd", "prognosis.json"} <= {
            p.name for p in folder.iterdir()
        }
        assert float(summary[case_id]["GTVp_ml"]) == pytest.approx(GTVP_VOXELS * voxel_ml, abs=1e-4)
        assert float(summary[case_id]["GTVn_ml"]) == pytest.approx(GTVN_VOXELS * voxel_ml, abs=1e-4)
        assert float(summary[case_id]["risk"]) == PATIENTS[case_id][0]
        assert float(summary[case_id]["seconds"]) > 0
    assert not (out / BROKEN).exists()

    metrics = json.loads((out / "metrics.json").read_text())
    gtvp, gtvn = metrics["segmentation"]["classes"]["GTVp"], metrics["segmentation"]["classes"]["GTVn"]
    assert gtvp["dice_mean"] == 1.0 and gtvp["hd95_mm_mean"] == 0.0 and gtvp["n_evaluated"] == 3
    # GTVn: Dice 1, 1 and 0 (predicted, absent from the reference); aggregated 2·(32+32) / (64+64+32).
    assert gtvn["dice_mean"] == pytest.approx(2 / 3)
    assert gtvn["dice_aggregated"] == pytest.approx(2 * (2 * GTVN_VOXELS) / (5 * GTVN_VOXELS))
    assert gtvn["n_hd95_worst_case"] == 1
    prognosis = metrics["prognosis"]
    assert prognosis["harrell_c"] == pytest.approx(2 / 3) and prognosis["n_cases"] == 3
    assert prognosis["n_events"] == 2
    per_case = {row["case_id"]: row for row in csv.DictReader(open(out / "metrics_per_case.csv"))}
    assert set(per_case) == {"SYN-001", "SYN-002", "SYN-003"}
    assert float(per_case[WITHOUT_NODES]["GTVn_dice"]) == 0.0


def test_a_second_run_skips_done_cases_and_reruns_unfinished_ones(
    installed_skills,
    pass_through,
    reads,
    tmp_path,
):
    dataset, out = write_cohort(tmp_path / "cohort"), tmp_path / "out"
    cohort_run(dataset, out)
    assert reads == list(PATIENTS)
    done = {case_id: (out / case_id / "result.json").stat().st_mtime_ns for case_id in ("SYN-001", "SYN-003")}
    (out / "SYN-002" / "result.json").unlink()  # unfinished: its folder is there, its result is not
    stale = out / ".SYN-001.x1y2.partial"  # what a killed writer leaves behind
    stale.mkdir()
    reads.clear()

    assert cohort_run(dataset, out) == 1
    assert reads == ["SYN-002", BROKEN]
    assert {case_id: (out / case_id / "result.json").stat().st_mtime_ns for case_id in done} == done
    statuses = {case_id: row["status"] for case_id, row in read_summary(out).items()}
    assert statuses == {"SYN-001": "skipped", "SYN-002": "ok", "SYN-003": "skipped", BROKEN: "failed"}
    assert (out / "SYN-002" / "result.json").is_file() and not stale.exists()
    assert json.loads((out / "metrics.json").read_text())["prognosis"]["n_cases"] == 3


def test_an_unknown_skill_is_refused_before_any_case(installed_skills, tmp_path, capsys):
    dataset, out = write_cohort(tmp_path / "cohort"), tmp_path / "out"
    code = main(["cohort", "run", "--dataset", str(dataset), "--skill", "nope", "--out", str(out), "--quiet"])
    assert code == 1 and "nope" in capsys.readouterr().err
    assert not out.exists()


def test_the_local_engine_refuses_workers(tmp_path):
    job = CohortJob(dataset=tmp_path, out=tmp_path / "out")
    with pytest.raises(MAFM3Error, match="--engine ray"):
        run_cohort(job, workers=2)


def test_the_ray_engine_without_ray_says_what_to_install(installed_skills, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    job = CohortJob(dataset=write_cohort(tmp_path / "cohort"), out=tmp_path / "out", skills=tuple(SKILLS))
    with pytest.raises(MAFM3Error, match=r"mafm3\[cohort\]"):
        run_cohort(job, engine="ray")
    assert not job.out.exists()


def test_the_core_and_the_cli_never_import_ray():
    code = (
        "import sys, mafm3.cli, mafm3.cohort.ray_engine, mafm3.cohort.summary; mafm3.cli.build_parser(); "
        "assert not any(name == 'ray' or name.startswith('ray.') for name in sys.modules), 'ray imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
