"""The body of the module's self-test (`MAFM3SlicerTest`), Qt-free so it also runs headless (Testing/).

Each check takes the running `unittest.TestCase` (for its assertions and `skipTest`) and the module's logic.
The inference check never passes without having run: when the core, torch or every skill pack is missing it
calls `skipTest` with the reason and what to install, and it stops the worker and deletes what it made also
when an assertion fails.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import slicer

from MAFM3SlicerLib.geometry import ijk_to_ras_of, image_from_volume
from MAFM3SlicerLib.result_nodes import LABEL_MAP_FILE, PROGNOSIS_FILE, segment_tag, table_rows
from MAFM3SlicerLib.skills import SkillInfo, runnable_skills

JOB_TIMEOUT_S = 900  # a CPU run of the demo skills on the tiny study takes well under a minute


def synthetic_pet_ct(scene):
    """A small oblique, anisotropic CT (air around soft tissue, in HU) and a coarser PET (SUV) over it."""
    angle = np.radians(20.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    ct_voxels = np.full((12, 16, 20), -1000, dtype=np.int16)  # (z, y, x)
    ct_voxels[3:9, 4:12, 5:15] = 40
    ct_ijk_to_ras = np.eye(4)
    ct_ijk_to_ras[:3, :3] = rotation @ np.diag([0.9, 1.1, 2.5])
    ct_ijk_to_ras[:3, 3] = (-9.0, 8.0, -15.0)
    ct = slicer.util.addVolumeFromArray(ct_voxels, ijkToRAS=ct_ijk_to_ras, name="CT")
    pet_voxels = np.full((9, 9, 11), 0.5, dtype=np.float32)  # covers the CT with room to spare
    pet_voxels[3:5, 3:5, 4:6] = 8.0
    pet_ijk_to_ras = np.eye(4)
    pet_ijk_to_ras[:3, :3] = rotation @ np.diag([1.8, 2.2, 3.75])
    pet_ijk_to_ras[:3, 3] = ct_ijk_to_ras[:3, 3]
    pet = slicer.util.addVolumeFromArray(pet_voxels, ijkToRAS=pet_ijk_to_ras, name="PET")
    return ct, pet


def check_study_description(test, logic) -> None:
    ct, pet = synthetic_pet_ct(slicer.mrmlScene)
    test.assertEqual(logic.describeStudy(ct, pet).problems, ())
    problems = logic.describeStudy(ct, ct).problems
    test.assertEqual(len(problems), 1)
    test.assertIn("selected as CT and as PET", problems[0])


def check_file_round_trip(test, logic) -> None:
    ct, _pet = synthetic_pet_ct(slicer.mrmlScene)
    with tempfile.TemporaryDirectory(dir=logic.temporaryDir) as folder:
        loaded = logic.fileToVolume(logic.volumeToFile(ct, Path(folder) / "ct.nrrd"))
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(loaded), slicer.util.arrayFromVolume(ct))
    np.testing.assert_allclose(ijk_to_ras_of(loaded), ijk_to_ras_of(ct), atol=1e-9)


def one_skill_per_task(skills: list[SkillInfo]) -> list[SkillInfo]:
    """Per segmentation and prognosis task, the skill that uses the most inputs (demo skills first)."""
    chosen = {}
    for skill in sorted(skills, key=lambda s: (-len(s.modalities), not s.demo)):
        if skill.task in ("segmentation", "prognosis"):
            chosen.setdefault(skill.task, skill)
    return list(chosen.values())


def inference_skip_reason(logic) -> tuple[str | None, list[SkillInfo]]:
    """Why the inference check cannot run here (None when it can), and the skills it would run."""
    status = logic.dependencyStatus()
    if not status.core_ok or status.unmet:
        return (
            "the mafm3 core is not installed in Slicer's Python (press Apply in the module to install it)",
            [],
        )
    if not status.torch_ok:
        return "PyTorch is not installed in Slicer's Python (press Apply in the module to install it)", []
    skills = one_skill_per_task(runnable_skills(logic.availableSkills(), has_pet=True))
    if not skills:
        return (
            "no skill pack is installed or shipped with the mafm3 core (Skill packs > Import skill pack...)",
            [],
        )
    return None, skills


def check_demo_skills_through_the_worker(test, logic) -> list[str]:
    """Demo study -> one skill per task (the PET/CT one where there is a choice) -> nodes, checked against
    the skills' manifests and the worker's own output files. Returns the ids of the skills that ran."""
    import SimpleITK as sitk  # Slicer's own; only here, where the check really runs

    reason, skills = inference_skip_reason(logic)
    if reason:
        test.skipTest(f"The inference check did not run: {reason}.")
    study = logic.loadDemoStudy(size="tiny")
    try:
        logic.startJob(study.ct, study.pet, study.clinical, [skill.id for skill in skills], device="auto")
        updates = logic.waitForJob(timeoutSeconds=JOB_TIMEOUT_S)
        ends = [u for u in updates if u.kind in ("result", "error", "cancelled", "crashed")]
        test.assertEqual([u.kind for u in ends], ["result"], [f"{u.message}\n{u.detail}" for u in ends])
        test.assertTrue(any(u.kind == "progress" for u in updates))
        imported, out_dir = ends[0].imported, ends[0].job.out_dir
        manifests = {
            skill.id: json.loads((Path(skill.folder) / "manifest.json").read_text()) for skill in skills
        }
        for skill in (s for s in skills if s.task == "segmentation"):
            _check_segments(test, imported, manifests[skill.id], study.ct, out_dir, sitk)
        for skill in (s for s in skills if s.task == "prognosis"):
            _check_prognosis(test, imported, skill.id, out_dir)
    finally:
        logic.cleanup()
    return [skill.id for skill in skills]


def _check_segments(test, imported, manifest: dict, ct, out_dir: Path, sitk) -> None:
    segmentation = imported.segmentation.GetSegmentation()
    for output in manifest["outputs"]:
        segment = segmentation.GetSegment(output["name"])
        test.assertIsNotNone(segment, f"no segment {output['name']}")
        test.assertEqual(segment.GetName(), output["name"])
        np.testing.assert_allclose(segment.GetColor(), output["color"], atol=1e-6)
        terminology = segment_tag(segment, segment.GetTerminologyEntryTagName())
        test.assertIn(f"SCT^{output['type']['value']}^", terminology)
    reference = imported.segmentation.GetNodeReference(
        imported.segmentation.GetReferenceImageGeometryReferenceRole()
    )
    test.assertIs(reference, ct)
    labels = np.zeros(slicer.util.arrayFromVolume(ct).shape, dtype=np.uint8)
    for output in manifest["outputs"]:
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(imported.segmentation, output["name"], ct)
        labels[mask > 0] = output["label"]
    written = sitk.Resample(
        sitk.ReadImage(str(out_dir / LABEL_MAP_FILE)),
        image_from_volume(ct),
        sitk.Transform(),
        sitk.sitkNearestNeighbor,
    )
    np.testing.assert_array_equal(labels, sitk.GetArrayFromImage(written))
    # The lesion table has a row per segment (then per node), and the uncertainty lies on the CT's grid.
    rows = table_rows(imported.measurements)
    test.assertEqual(
        [r["Segment"] for r in rows if " " not in r["Segment"]], [o["name"] for o in manifest["outputs"]]
    )
    test.assertEqual(imported.uncertainty.GetImageData().GetDimensions(), ct.GetImageData().GetDimensions())
    test.assertLessEqual(float(slicer.util.arrayFromVolume(imported.uncertainty).max()), 100.0)


def _check_prognosis(test, imported, skill_id: str, out_dir: Path) -> None:
    prognosis = json.loads((out_dir / PROGNOSIS_FILE).read_text())
    (row,) = [r for r in table_rows(imported.prognosis.table) if r["Skill"] == skill_id]
    test.assertEqual(row["Risk group"], prognosis["risk_group"])
    test.assertAlmostEqual(row["Risk score"], prognosis["risk"], places=9)
    survival = [row[f"S({years} y)"] for years in (1, 2, 3, 5)]
    known = [s for s in survival if not np.isnan(s)]
    test.assertTrue(known and all(0.0 <= s <= 1.0 for s in known))
    test.assertEqual(known, sorted(known, reverse=True))  # S(t) never rises
    test.assertTrue(imported.prognosis.chart.HasPlotSeriesNodeID(imported.prognosis.series.GetID()))
