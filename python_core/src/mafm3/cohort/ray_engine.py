"""The Ray cohort engine: Ray Data streams the cases through three stages with their own resources.

    read (CPU tasks: files -> Study)  ->  infer (actor pool, each actor a warm Engine; 1 GPU per actor on a
    GPU cluster)  ->  write (CPU tasks: the case's output folder)

so reading and writing on the CPUs overlap inference on the GPUs, and a model is loaded once per actor, not
once per case. A failure in any stage is caught for that case and passed along as its error; the other
cases go on. Ray is an optional extra (`pip install mafm3[cohort]`) imported only here. `ray.init` is called
with its defaults unless Ray is already initialised (set RAY_ADDRESS to join a cluster).
"""

from __future__ import annotations

import os
import time

from mafm3.cohort import (
    CaseOutcome,
    CohortJob,
    describe_error,
    infer_case,
    read_case,
    write_case,
)
from mafm3.errors import MAFM3Error
from mafm3.progress import ProgressCallback


def require_ray():
    """The `ray` module with Ray Data; MAFM3Error saying what to install when it is missing."""
    try:
        import ray
        import ray.data
    except ImportError as error:
        raise MAFM3Error(
            "The Ray cohort engine needs Ray; install it with `pip install mafm3[cohort]`, or use "
            "--engine local."
        ) from error
    return ray


def run_with_ray(
    cases: list, job: CohortJob, outcomes: list[CaseOutcome], workers: int | None, progress: ProgressCallback
) -> None:
    """Run `cases`, appending one outcome per case to `outcomes` as it finishes."""
    from mafm3.config import home_dir

    ray = require_ray()
    if not ray.is_initialized():
        ray.init(include_dashboard=False)
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), max(int(resources.get("CPU", 1)), 1)
    on_gpu = gpus > 0 and (job.device == "auto" or job.device.startswith("cuda"))
    if job.device.startswith("cuda") and not gpus:
        raise MAFM3Error("--device cuda was asked for but the Ray cluster has no GPU; use --device cpu.")
    workers = workers or (gpus if on_gpu else 1)
    # On CPUs each inference actor gets an equal share, one share staying with the read and write stages.
    actor_cpus = 1 if on_gpu else max(1, cpus // (workers + 1))
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # progress is reported per case below
    # Stage errors are caught per case; what still fails a block is a worker that died (killed for memory,
    # say). Its case is dropped from this run, summarised as pending and tried again by the next run.
    context.max_errored_blocks = -1
    dataset = (
        ray.data.from_items([{"index": index} for index in range(len(cases))])
        # Given as a function, the read stage's resources keep Ray Data from fusing it into the inference
        # actors (it fuses a task stage into the next actor stage when their resources are equal), so
        # reading overlaps inference on a CPU-only cluster too.
        .map(_read_stage, fn_kwargs={"cases": cases}, ray_remote_args_fn=_one_cpu)
        .map_batches(
            InferenceActor,
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_gpus=1 if on_gpu else 0,
            num_cpus=actor_cpus,
            fn_constructor_kwargs={
                "cases": cases,
                "job": job,
                "device": "cuda" if on_gpu else ("cpu" if job.device == "auto" else job.device),
                "home": str(home_dir()),
                "threads": None if on_gpu else actor_cpus,
            },
        )
        .map(_write_stage, fn_kwargs={"cases": cases, "out": str(job.out)}, num_cpus=1)
    )
    for number, row in enumerate(dataset.iter_rows()):
        case_id = cases[row["index"]].case_id
        status = "failed" if row["error"] else "ok"
        outcomes.append(CaseOutcome(case_id, status, round(float(row["seconds"]), 4), row["error"] or None))
        progress(
            "cohort", (number + 1) / len(cases), f"case {case_id} {status} ({number + 1} of {len(cases)})"
        )


def _one_cpu() -> dict:
    return {"num_cpus": 1}


def _read_stage(row: dict, cases: list) -> dict:
    """CPU stage: the case's files read into a Study (CT in HU, PET in SUV, clinical record)."""
    started = time.perf_counter()
    try:
        study, _ = read_case(cases[row["index"]])
    except Exception as error:  # recorded for this case, the others go on
        return {
            "index": row["index"],
            "study": None,
            "seconds": time.perf_counter() - started,
            "error": describe_error(error),
        }
    return {"index": row["index"], "study": study, "seconds": time.perf_counter() - started, "error": ""}


class InferenceActor:
    """Holds one warm Engine (backbones and skills stay loaded between cases) and runs one case per call."""

    def __init__(self, cases: list, job: CohortJob, device: str, home: str, threads: int | None) -> None:
        import torch

        from mafm3.engine import Engine

        os.environ["MAFM3_HOME"] = home  # where the driver found its skills and backbones
        if threads is not None:
            torch.set_num_threads(threads)
        self.cases, self.job = cases, job
        self.engine = Engine(device)

    def __call__(self, batch: dict) -> dict:
        rows = {key: list(values) for key, values in batch.items()}
        rows["result"] = [None] * len(rows["index"])
        for position, (index, study) in enumerate(zip(rows["index"], rows["study"], strict=True)):
            if rows["error"][position]:
                continue
            started = time.perf_counter()
            case = self.cases[index]
            try:
                rows["result"][position] = infer_case(
                    self.engine, case, self.job, study, rows["seconds"][position]
                )
            except Exception as error:  # recorded for this case, the others go on
                rows["error"][position] = describe_error(error)
            rows["seconds"][position] += time.perf_counter() - started
        return rows


def _write_stage(row: dict, cases: list, out: str) -> dict:
    """CPU stage: the case's output folder written; only the index, seconds and error go on."""
    from pathlib import Path

    started = time.perf_counter()
    error = row["error"]
    if not error:
        try:
            write_case(row["result"], row["study"], Path(out) / cases[row["index"]].case_id)
        except Exception as failure:  # recorded for this case, the others go on
            error = describe_error(failure)
    return {"index": row["index"], "seconds": row["seconds"] + time.perf_counter() - started, "error": error}
