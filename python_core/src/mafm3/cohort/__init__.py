"""`mafm3 cohort run`: the skills over every case of a dataset, one output folder per case, resumable.

The dataset is anything `training.datasets.load_cohort` reads (a HECKTOR 2022 layout folder or a datalist
JSON); PET files are taken as SUV (the dataset convention) and each case's clinical record comes from the
dataset's clinical CSV or datalist entry. `--out` gets:

    <case id>/             exactly what `mafm3 run` writes for the case (result.json last; the folder
                           appears whole or not at all)
    summary.csv            one row per case: case_id, status, seconds, <segment>_ml, risk, risk_group, error
    metrics.json           when labels or endpoints exist: per-class Dice and HD95 (mm) with the empty-mask
    metrics_per_case.csv   policy of `training.metrics`, and Harrell's C of the predicted risk

status: "ok" (run now), "skipped" (done by an earlier run), "failed" (the error column says why; the case is
tried again by the next run), "pending" (not reached: the run was interrupted, or a Ray worker died on it).
seconds: reading + inference as recorded in the case's result.json (writing excluded); for a failed case,
the time until it failed.

Resuming: a case is done when its folder holds a readable result.json, and is then skipped; anything else
is (re)run, over whatever is in its folder. Staging folders left by a killed run are removed first. The
summary and metrics cover every case of the dataset, done now or before, and are replaced atomically.

Engines: "local" runs the cases one after another in this process on one warm `Engine`; "ray" streams them
through Ray Data (`cohort.ray_engine`), which is an optional extra (`pip install mafm3[cohort]`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from mafm3.errors import MAFM3Error
from mafm3.progress import ProgressCallback, silent_progress

ENGINES = ("local", "ray")
RESULT_JSON = "result.json"  # `outputs.RESULT_JSON`, named here so that reading a cohort needs no writers
LABEL_MAP = "labels.nii.gz"  # `outputs.LABEL_MAP`
SUMMARY_CSV = "summary.csv"
METRICS_JSON = "metrics.json"
STATUSES = ("ok", "skipped", "failed", "pending")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CohortJob:
    """What to run over which dataset, and where to put it; see `engine.RunRequest` for the fields."""

    dataset: Path
    out: Path
    skills: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ("segmentation",)
    device: str = "auto"
    precision: str = "auto"


@dataclass(frozen=True)
class CaseOutcome:
    """How one case went in this run: status "ok" or "failed", wall seconds, the error sentence."""

    case_id: str
    status: str
    seconds: float
    error: str | None = None


@dataclass
class CohortReport:
    """Counts by status and the files written."""

    counts: dict[str, int]
    summary_csv: Path
    metrics_json: Path | None
    outcomes: list[CaseOutcome] = field(default_factory=list)


def case_request(case, job: CohortJob):
    """The `RunRequest` of one case (its study is read separately, see `read_case`)."""
    from mafm3.engine import RunRequest

    return RunRequest(
        ct=str(case.ct),
        pet=str(case.pet) if case.pet is not None else None,
        skills=list(job.skills),
        tasks=list(job.tasks),
        pet_units="suv",
        device=job.device,
        precision=job.precision,
    )


def read_case(case):
    """The case's `Study` (CT in HU, PET in SUV, clinical record) and the seconds reading took."""
    from mafm3.training.model_space import case_study

    started = time.perf_counter()
    study = case_study(case)
    return study, time.perf_counter() - started


def infer_case(engine, case, job: CohortJob, study, read_s: float):
    """The case's `StudyResult` on a warm engine; the reading time is recorded with the engine's stages."""
    result, _ = engine.run(case_request(case, job), study=study)
    result.timings_s["read"] = round(read_s, 4)
    return result


def write_case(result, study, folder: Path) -> None:
    """Every output of `mafm3 run` into the case's folder, replacing whatever an unfinished run left there."""
    from mafm3.outputs import write_outputs

    write_outputs(result, folder, study.ct, study.pet, overwrite=True)


def describe_error(error: BaseException) -> str:
    """One line for the summary: a MAFM3Error's own sentence, else the exception's type and first line."""
    if isinstance(error, MAFM3Error):
        return str(error)
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {first_line}".rstrip(": ")


def completed_record(folder: Path) -> dict | None:
    """The case's result.json when the case is done, else None."""
    try:
        record = json.loads((folder / RESULT_JSON).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def run_cohort(
    job: CohortJob,
    *,
    engine: str = "local",
    workers: int | None = None,
    progress: ProgressCallback = silent_progress,
) -> CohortReport:
    """Run `job`: the cases not done yet through `engine`, then the summary and metrics over all cases.

    workers: the size of the inference actor pool of the Ray engine (default: one per GPU, else one).
    """
    from mafm3.training.datasets import load_cohort

    if engine not in ENGINES:
        raise MAFM3Error(f"Unknown cohort engine {engine!r}; use {' or '.join(ENGINES)}.")
    if workers is not None and workers < 1:
        raise MAFM3Error(f"--workers must be at least 1, got {workers}.")
    if engine == "local" and workers not in (None, 1):
        raise MAFM3Error("The local engine runs one case at a time; use --engine ray for several workers.")
    from mafm3.engine import Engine

    cohort = load_cohort(job.dataset)
    if not len(cohort):
        raise MAFM3Error(f"The dataset {job.dataset} has no case; check the path.")
    warm = Engine(job.device)
    check_skills(warm, job)
    if engine == "ray":
        from mafm3.cohort.ray_engine import require_ray, run_with_ray

        require_ray()
    job.out.mkdir(parents=True, exist_ok=True)
    _remove_staging_folders(job.out)
    todo = [case for case in cohort if completed_record(job.out / case.case_id) is None]
    progress("cohort", 0.0, f"{len(cohort) - len(todo)} of {len(cohort)} cases already done")
    outcomes: list[CaseOutcome] = []
    try:
        if todo and engine == "local":
            _run_local(warm, todo, job, outcomes, progress)
        elif todo:
            run_with_ray(todo, job, outcomes, workers, progress)
    finally:  # an interrupted run still leaves a summary of what is done
        from mafm3.cohort.summary import write_metrics_files, write_summary

        summary_csv, counts = write_summary(cohort, job.out, outcomes)
    progress("metrics", 0.0, "metrics over the cases with labels or endpoints")
    metrics_json = write_metrics_files(cohort, job.out)
    progress("cohort", 1.0, f"{counts['ok']} run, {counts['skipped']} skipped, {counts['failed']} failed")
    return CohortReport(counts, summary_csv, metrics_json, outcomes)


def check_skills(engine, job: CohortJob) -> None:
    """Refuse at once a skill id or task that no installed skill serves (rather than failing every case)."""
    from mafm3.engine import RunRequest

    engine.choose(RunRequest(ct="", skills=list(job.skills), tasks=list(job.tasks)), {"CT", "PET"})


def _run_local(
    engine, cases, job: CohortJob, outcomes: list[CaseOutcome], progress: ProgressCallback
) -> None:
    for number, case in enumerate(cases):
        progress("cohort", number / len(cases), f"case {case.case_id} ({number + 1} of {len(cases)})")
        started = time.perf_counter()
        try:
            study, read_s = read_case(case)
            write_case(infer_case(engine, case, job, study, read_s), study, job.out / case.case_id)
        except Exception as error:  # one broken case must not stop the cohort: it is recorded instead
            log.debug("case %s failed", case.case_id, exc_info=True)
            outcomes.append(CaseOutcome(case.case_id, "failed", _since(started), describe_error(error)))
        else:
            outcomes.append(CaseOutcome(case.case_id, "ok", _since(started)))


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 4)


def _remove_staging_folders(out: Path) -> None:
    """Delete the hidden `.<case>.*.partial` / `.previous` folders a killed writer leaves in `out`."""
    for path in out.glob(".*"):
        if path.is_dir() and path.name.endswith((".partial", ".previous")):
            shutil.rmtree(path, ignore_errors=True)


def csv_text(rows: list[dict], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
