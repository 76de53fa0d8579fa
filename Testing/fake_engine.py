"""A stand-in for `mafm3.engine.Engine`, for the real worker: MAFM3_WORKER_ENGINE=fake_engine:FakeEngine.

It lets the headless tests drive the whole path (panel -> job files -> `python -m mafm3.worker` -> output
folder -> nodes) without a model: the requested skills are looked up in the real registry (installed packs
under MAFM3_HOME, then the packs shipped with mafm3), and the real writers (`mafm3.outputs.write_outputs`)
write what a run of those skills would: segments from the manifest on the CT's grid, a prognosis, and the
clinical record it was given (in `inputs`, as the engine records it).

What it "finds" is fixed by the CT's grid: GTVp is the block of voxels around the CT's centre (a fifth of the
size along each axis), GTVn a smaller block beside it (GTVN_OFFSET), each with its manifest's label value.

Skill ids that contain "slow" report progress every 10 ms for up to 20 s (checking for Cancel, as the engine
does between windows); ids that contain "crash" end the process at once.
"""

from __future__ import annotations

import os
import time

import numpy as np
import SimpleITK as sitk

from mafm3.clinical import ClinicalRecord
from mafm3.config import bundled_skills_dir, skills_dir
from mafm3.errors import MAFM3Error
from mafm3.imaging.measurements import measure_lesions
from mafm3.outputs import write_outputs
from mafm3.results import PrognosisResult, SegmentationResult, StudyResult
from mafm3.skills.registry import available_skills

CRASH_CODE = 3
GTVN_OFFSET = 0.3  # GTVn's block starts this fraction of the size beyond GTVp's, along the first axis
PROGRESS = [("read", 1.0, "study loaded"), ("inference", 0.5, "window 1 of 2"), ("inference", 1.0, "done")]
PROGNOSIS_DAYS = [182.625, 365.25, 730.5, 1095.75, 1826.25]  # 0.5, 1, 2, 3, 5 years
PROGNOSIS_SURVIVAL = [0.95, 0.9, 0.75, 0.6, 0.4]
PROGNOSIS_RISK = 1.75
PROGNOSIS_GROUP = "high"


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


class FakeEngine:
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
        skill_ids = list(request.skills)
        if any("crash" in skill_id for skill_id in skill_ids):
            os._exit(CRASH_CODE)
        if any("slow" in skill_id for skill_id in skill_ids):
            for step in range(2000):
                progress("inference", step / 2000, "slowly")
                time.sleep(0.01)
        for stage, fraction, message in PROGRESS:
            progress(stage, fraction, message)
        manifests = {}
        for root in (skills_dir(), bundled_skills_dir()):
            for skill in available_skills(root=root):
                manifests.setdefault(skill.manifest.id, skill.manifest)
        unknown = [skill_id for skill_id in skill_ids if skill_id not in manifests]
        if unknown:
            raise MAFM3Error(f"Skill {unknown[0]!r} is not installed; install it first.")
        ct = sitk.ReadImage(str(request.ct))
        clinical = ClinicalRecord.from_json(request.clinical).to_dict() if request.clinical else None
        result = StudyResult(
            inputs={"clinical": clinical, "pet": request.pet}, device=request.device or "cpu"
        )
        for skill_id in skill_ids:
            manifest = manifests[skill_id]
            result.demo = result.demo or manifest.demo
            if manifest.task == "segmentation":
                segments = manifest.segments()
                labels = fake_label_map(ct, {spec.name: spec.label for spec in segments})
                uncertainty = sitk.Cast(labels > 0, sitk.sitkUInt8) * 50  # unsure inside the lesions
                result.segmentation = SegmentationResult(
                    labels, segments, skill_id, manifest.version, uncertainty=uncertainty
                )
                result.segmentation.measurements = measure_lesions(
                    labels, [spec.label for spec in segments], ct, None, uncertainty
                )
            elif manifest.task == "prognosis":
                result.prognosis = PrognosisResult(
                    risk=PROGNOSIS_RISK,
                    risk_group=PROGNOSIS_GROUP,
                    times_days=PROGNOSIS_DAYS,
                    survival=PROGNOSIS_SURVIVAL,
                    survival_at_years={1: 0.9, 2: 0.75, 3: 0.6, 5: 0.4},
                    skill_id=skill_id,
                    skill_version=manifest.version,
                )
        result.timings_s = {"total": 0.01}
        return result, write_outputs(result, out_dir, ct, overwrite=overwrite)
