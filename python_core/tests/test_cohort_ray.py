"""`mafm3 cohort run --engine ray`: the same cohort through Ray Data on 2 CPUs (read -> actor pool -> write).

Ray's workers are other processes, so the network is not replaced here: the tiny skills run for real and
the checks are on what the pipeline must guarantee: every case folder, the broken case recorded, resuming,
the summary and the metrics files.
"""

from __future__ import annotations

import json

import pytest
from cohort_cases import BROKEN, PATIENTS, SKILLS, read_summary, write_cohort

from mafm3.cohort import CohortJob, run_cohort

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


@pytest.fixture()
def ray_on_two_cpus(home):
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()


def test_the_ray_engine_runs_the_cohort_records_the_broken_case_and_resumes(
    installed_skills,
    ray_on_two_cpus,
    tmp_path,
):
    job = CohortJob(
        dataset=write_cohort(tmp_path / "cohort"), out=tmp_path / "out", skills=tuple(SKILLS), device="cpu"
    )
    report = run_cohort(job, engine="ray")
    assert report.counts == {"ok": 3, "skipped": 0, "failed": 1, "pending": 0}
    summary = read_summary(job.out)
    assert summary[BROKEN]["status"] == "failed" and "cannot be read" in summary[BROKEN]["error"]
    good = [case_id for case_id in PATIENTS if case_id != BROKEN]
    for case_id in good:
        assert (job.out / case_id / "result.json").is_file() and summary[case_id]["risk"]
        assert json.loads((job.out / case_id / "result.json").read_text())["timings_s"]["read"] > 0
    metrics = json.loads(report.metrics_json.read_text())
    assert metrics["segmentation"]["n_cases"] == 3 and metrics["prognosis"]["n_cases"] == 3

    done = {case_id: (job.out / case_id / "result.json").stat().st_mtime_ns for case_id in good}
    again = run_cohort(job, engine="ray")
    assert again.counts == {"ok": 0, "skipped": 3, "failed": 1, "pending": 0}
    assert [outcome.case_id for outcome in again.outcomes] == [BROKEN]
    assert {case_id: (job.out / case_id / "result.json").stat().st_mtime_ns for case_id in good} == done
