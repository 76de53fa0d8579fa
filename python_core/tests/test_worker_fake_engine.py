"""Not tests: the fake engine of the worker tests (`MAFM3_WORKER_ENGINE=test_worker_fake_engine:FakeEngine`).

It stands in for `mafm3.engine.Engine` in `test_worker.py` and in `Testing/test_worker_client.py`, which start
the real `python -m mafm3.worker` with this folder on PYTHONPATH. It offers one skill (`offered_skill`); the
first skill id of a run request chooses what the run does:

| skill | behaviour |
|---|---|
| (none) | reports `PROGRESS`, then writes the outputs (real writers): GTVp = voxels above `TUMOUR_HU` |
| `slow` | progress every 10 ms for up to 20 s (long enough to be cancelled) |
| `hang` | sleeps 20 s without reporting progress (a worker that cannot be cancelled politely) |
| `user-error` | raises `MAFM3Error(USER_ERROR)` |
| `bug` | raises `ZeroDivisionError` |
| `crash` | the process exits at once with `CRASH_CODE` |

Each run prints to stdout, from Python and from the file descriptor, as libraries loading models do: the
worker must keep such noise off its protocol stream.
"""

from __future__ import annotations

import functools
import os
import time

import SimpleITK as sitk

from mafm3.errors import MAFM3Error
from mafm3.outputs import write_outputs
from mafm3.results import GTVN, GTVP, PrognosisResult, SegmentationResult, StudyResult
from mafm3.skills.registry import AvailableSkill, zero_shot_manifest

TUMOUR_HU = 60.0
USER_ERROR = "The fake skill refuses this study; choose another skill."
CRASH_CODE = 3
STDOUT_NOISE = "fake backbone loading"
PROGRESS = [("read", 1.0, "study loaded"), ("inference", 0.5, "window 1 of 2"), ("inference", 1.0, "done")]
PROGNOSIS = PrognosisResult(
    risk=0.25,
    risk_group="low",
    times_days=[0.0, 365.0, 730.0],
    survival=[1.0, 0.9, 0.8],
    survival_at_years={1: 0.9, 2: 0.8},
    skill_id="fake-rfs",
    skill_version="0.1",
)


@functools.cache
def offered_skill() -> AvailableSkill:
    """The one skill the fake offers, built in (no pack folder): CT-CLIP zero-shot on a fake backbone.

    Built on first use: its preset imports torch, which a worker that is only started and stopped never needs.
    """
    return AvailableSkill(zero_shot_manifest({"id": "fake-backbone", "sha256": "0" * 64}), None)


class FakeEngine:
    """`available` and `run_and_write` as in `mafm3.engine.Engine`; the result tells how many runs it made."""

    def __init__(self):
        self.runs = 0

    def available(self) -> list[AvailableSkill]:
        return [offered_skill()]

    def run_and_write(
        self,
        request,
        out_dir,
        *,
        overwrite=False,
        dicom_seg=False,
        rtstruct=False,
        sr=False,
        progress,
        cancel=None,
    ):
        self.runs += 1
        print(STDOUT_NOISE)
        os.write(1, f"{STDOUT_NOISE} (file descriptor 1)\n".encode())
        behaviour = request.skills[0] if request.skills else ""
        if behaviour == "slow":
            for step in range(2000):
                progress("inference", step / 2000, "slowly")
                time.sleep(0.01)
        elif behaviour == "hang":
            time.sleep(20)
        elif behaviour == "user-error":
            raise MAFM3Error(USER_ERROR)
        elif behaviour == "bug":
            return 1 / 0
        elif behaviour == "crash":
            os._exit(CRASH_CODE)
        for stage, fraction, message in PROGRESS:
            progress(stage, fraction, message)
        ct = sitk.ReadImage(str(request.ct))
        labels = sitk.Cast(ct > TUMOUR_HU, sitk.sitkUInt8) * GTVP.label
        result = StudyResult(
            inputs={"ct": request.ct},
            segmentation=SegmentationResult(labels, [GTVP, GTVN], "fake-seg", "0.1"),
            prognosis=PROGNOSIS,
            device=request.device or "cpu",
            backbone={"id": "fake", "runs_of_this_engine": self.runs},
        )
        return result, write_outputs(result, out_dir, ct, overwrite=overwrite)
