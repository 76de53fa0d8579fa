"""The one fake engine of the worker tests: `MAFM3_WORKER_ENGINE=fake_engine:FakeEngine`. Not tests.

It is a `mafm3.worker.WorkerEngine` (the two methods the worker calls), so the core's worker tests and the
Slicer module's headless tests (`Testing/`) drive the real `python -m mafm3.worker` without a model. Its
skills are the real registry's, as the engine's are: packs installed under MAFM3_HOME (the Slicer tests write
them as manifests only with `Testing/skill_packs.py`), then the demo packs shipped with mafm3.

A run reports `PROGRESS`, then writes with the real writers what a run of the requested skills would:
- segmentation: GTVp a block around the CT's centre (a fifth of its size along each axis), GTVn a smaller
  block `GTVN_OFFSET` further along the first array axis, with the manifest's label values, on the CT's grid;
- prognosis: `PROGNOSIS`;
- in `inputs` the clinical record, the PET and the request's given fields (`request`, as the engine records
  them); in `backbone` how many runs this engine made.
Each skill id runs its active version, as in the engine.
Each run first prints `STDOUT_NOISE` from Python and from file descriptor 1, as libraries loading models do.

The first skill id of a request asks for a behaviour when it contains one of these words:

| word | behaviour |
|---|---|
| `slow` | progress every 10 ms for up to 20 s (long enough to be cancelled), then a normal run |
| `hang` | sleeps 20 s without reporting progress (a worker that cannot be cancelled politely) |
| `user-error` | raises `MAFM3Error(USER_ERROR)` |
| `bug` | raises `ZeroDivisionError` |
| `crash` | the process exits at once with `CRASH_CODE` |

`improve(params, progress, cancel)` answers the worker's `improve` op without training: it reports
`IMPROVE_PROGRESS` (stages "train" and "evaluate"; with `slow` in the skill, train progress every 10 ms for up
to 20 s first), then writes into `params["out"]` a new pack of the skill's active version (or `ID@VERSION`)
with the next minor version (its manifest, and its weights file when the base pack has one) and a
`comparison.json` naming `current` and `new`, with `FAKE_DICE` per class (`FAKE_DICE_WORSE` for the new
version when the skill id contains `worse`, which the gate refuses). With `install` a passing new version is
copied into MAFM3_HOME's skills and made active, as `mafm3 improve` installs it (without checking weights, so
that manifest-only packs work); the result is the worker's improve record.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from mafm3.clinical import ClinicalRecord
from mafm3.config import skills_dir
from mafm3.errors import MAFM3Error
from mafm3.imaging.measurements import measure_lesions
from mafm3.outputs import write_outputs
from mafm3.results import PrognosisResult, SegmentationResult, StudyResult
from mafm3.skills.manifest import WEIGHTS_FILE
from mafm3.skills.packs import resolve_pack
from mafm3.skills.registry import AvailableSkill, installed_and_shipped_skills
from mafm3.skills.store import use_version

USER_ERROR = "The fake skill refuses this study; choose another skill."
CRASH_CODE = 3
STDOUT_NOISE = "fake backbone loading"
PROGRESS = [("read", 1.0, "study loaded"), ("inference", 0.5, "window 1 of 2"), ("inference", 1.0, "done")]
IMPROVE_PROGRESS = [
    ("train", 0.5, "iteration 1/2"),
    ("train", 1.0, "iteration 2/2"),
    ("evaluate", 1.0, "done"),
]
FAKE_DICE = {"current": {"GTVp": 0.5, "GTVn": 0.3}, "new": {"GTVp": 0.7, "GTVn": 0.4}}
FAKE_DICE_WORSE = {"GTVp": 0.2, "GTVn": 0.1}
FAKE_HELD_OUT = ["FAKE-001", "FAKE-002"]
GTVN_OFFSET = 0.3  # GTVn's block starts this fraction of the size beyond GTVp's, along the first axis
PROGNOSIS = PrognosisResult(
    risk=1.75,
    risk_group="high",
    times_days=[182.625, 365.25, 730.5, 1095.75, 1826.25],  # 0.5, 1, 2, 3, 5 years
    survival=[0.95, 0.9, 0.75, 0.6, 0.4],
    survival_at_years={1: 0.9, 2: 0.75, 3: 0.6, 5: 0.4},
    skill_id="",  # the skill that ran
    skill_version="",
)


def fake_label_map(ct: sitk.Image, labels: dict[str, int]) -> sitk.Image:
    """uint8 labels on the CT's grid: GTVp around the centre, GTVn beside it (see the module docstring)."""
    shape = np.array(sitk.GetArrayViewFromImage(ct).shape)  # (z, y, x)
    voxels = np.zeros(shape, dtype=np.uint8)
    size = np.maximum(shape // 5, 1)
    start = shape // 2 - size // 2
    voxels[tuple(slice(s, s + n) for s, n in zip(start, size, strict=True))] = labels.get("GTVp", 0)
    node_start = start.copy()
    node_start[0] = min(start[0] + int(GTVN_OFFSET * shape[0]), shape[0] - 1)
    node_size = np.maximum(size // 2, 1)
    voxels[tuple(slice(s, s + n) for s, n in zip(node_start, node_size, strict=True))] = labels.get("GTVn", 0)
    image = sitk.GetImageFromArray(voxels)
    image.CopyInformation(ct)
    return image


def _given(request) -> dict:
    """The request's fields that were given, as the engine records them in result.json (`inputs.request`)."""
    return {key: value for key, value in asdict(request).items() if value not in (None, [], "")}


class FakeEngine:
    """`available` and `run_and_write` as in `mafm3.engine.Engine`, behaving as the module docstring says."""

    def __init__(self) -> None:
        self.runs = 0

    def available(self) -> list[AvailableSkill]:
        return installed_and_shipped_skills()

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
        print(STDOUT_NOISE, flush=True)
        os.write(1, f"{STDOUT_NOISE} (file descriptor 1)\n".encode())
        behaviour = request.skills[0] if request.skills else ""
        if "crash" in behaviour:
            os._exit(CRASH_CODE)
        if "user-error" in behaviour:
            raise MAFM3Error(USER_ERROR)
        if "bug" in behaviour:
            return 1 / 0
        if "hang" in behaviour:
            time.sleep(20)
        if "slow" in behaviour:
            for step in range(2000):
                progress("inference", step / 2000, "slowly")
                time.sleep(0.01)
        for stage, fraction, message in PROGRESS:
            progress(stage, fraction, message)
        return self._write(request, out_dir, overwrite)

    def _write(self, request, out_dir, overwrite: bool):
        manifests = {skill.manifest.id: skill.manifest for skill in self.available() if skill.active}
        unknown = [skill_id for skill_id in request.skills if skill_id not in manifests]
        if unknown:
            raise MAFM3Error(f"Skill {unknown[0]!r} is not installed; install it first.")
        ct = sitk.ReadImage(str(request.ct))
        clinical = ClinicalRecord.from_json(request.clinical).to_dict() if request.clinical else None
        result = StudyResult(
            inputs={"ct": request.ct, "clinical": clinical, "pet": request.pet, "request": _given(request)},
            device=request.device or "cpu",
            backbone={"id": "fake", "runs_of_this_engine": self.runs},
        )
        for manifest in (manifests[skill_id] for skill_id in request.skills):
            result.demo = result.demo or manifest.demo
            if manifest.task == "segmentation":
                segments = manifest.segments()
                labels = fake_label_map(ct, {spec.name: spec.label for spec in segments})
                uncertainty = sitk.Cast(labels > 0, sitk.sitkUInt8) * 50  # unsure inside the lesions
                result.segmentation = SegmentationResult(
                    labels,
                    segments,
                    manifest.id,
                    manifest.version,
                    uncertainty=uncertainty,
                    skill_weights_sha256=manifest.weights["sha256"],
                )
                result.segmentation.measurements = measure_lesions(
                    labels, [spec.label for spec in segments], ct, None, uncertainty
                )
            elif manifest.task == "prognosis":
                result.prognosis = replace(PROGNOSIS, skill_id=manifest.id, skill_version=manifest.version)
        result.timings_s = {"total": 0.01}
        return result, write_outputs(result, out_dir, ct, overwrite=overwrite)

    def improve(self, params: dict, progress, cancel=None) -> dict:
        base_folder = resolve_pack(params["skill"])
        base = json.loads((base_folder / "manifest.json").read_text())
        if "slow" in base["id"]:
            for step in range(2000):
                progress("train", step / 2000, "slowly")
                time.sleep(0.01)
        for stage, fraction, message in IMPROVE_PROGRESS:
            progress(stage, fraction, message)
        from mafm3.skills.manifest import SkillManifest
        from mafm3.training.improve import COMPARISON_FILE, new_version

        version = new_version(SkillManifest.from_dict(base))
        new_dice = FAKE_DICE_WORSE if "worse" in base["id"] else FAKE_DICE["new"]
        dice = {"current": FAKE_DICE["current"], "new": new_dice}
        passed = sum(new_dice.values()) >= sum(FAKE_DICE["current"].values())
        out = Path(params["out"]).resolve()
        if out.exists():
            raise MAFM3Error(f"{out} already exists and packs are never overwritten; choose a new --out.")
        out.mkdir(parents=True)
        (out / "manifest.json").write_text(json.dumps({**base, "version": version}, indent=2))
        if (base_folder / WEIGHTS_FILE).is_file():
            shutil.copyfile(base_folder / WEIGHTS_FILE, out / WEIGHTS_FILE)
        installed = bool(params.get("install")) and passed
        if installed:  # a copy, as `install_pack` makes, which would refuse a manifest-only pack
            shutil.copytree(out, skills_dir() / f"{base['id']}-{version}")
            use_version(base["id"], version)
        message = (
            f"{base['id']} {version} is installed and active."
            if installed
            else f"{base['id']} {version} is not installed; {base['version']} stays."
        )

        def summary(values: dict) -> dict:  # the shape of `training.metrics.segmentation_summary`
            classes = {
                name: {
                    "dice_mean": dice,
                    "dice_mean_ci": {"low": dice - 0.1, "high": dice + 0.1},
                    "hd95_mm_mean": 5.0,
                    "hd95_mm_mean_ci": {"low": 4.0, "high": 6.0},
                }
                for name, dice in values.items()
            }
            return {
                "n_cases": len(FAKE_HELD_OUT),
                "classes": classes,
                "dice_mean_over_classes": sum(values.values()) / len(values),
            }

        comparison = {
            "skill": base["id"],
            "scheme": "holdout",
            "versions": {
                "current": {"id": base["id"], "version": base["version"]},
                "new": {"id": base["id"], "version": version},
            },
            "held_out_case_ids": FAKE_HELD_OUT,
            "metrics": {name: summary(values) for name, values in dice.items()},
            "per_case": {
                name: [
                    {"case_id": case_id, **{f"{cls}_dice": value for cls, value in values.items()}}
                    for case_id in FAKE_HELD_OUT
                ]
                for name, values in dice.items()
            },
            "difference": {
                cls: {"dice_mean": new_dice[cls] - FAKE_DICE["current"][cls], "n_cases": len(FAKE_HELD_OUT)}
                for cls in new_dice
            },
            "gate": {"passed": passed, "reasons": [] if passed else ["mean Dice over classes fell"]},
            "installed": installed,
            "message": message,
        }
        (out / COMPARISON_FILE).write_text(json.dumps(comparison, indent=2))
        return {"comparison": comparison, "pack": str(out), "installed": installed, "message": message}
