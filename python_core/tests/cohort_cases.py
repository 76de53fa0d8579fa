"""A small HECKTOR 2022 layout cohort of four cases (one broken) whose metrics follow by hand. Not tests."""

from __future__ import annotations

import csv
from pathlib import Path

import SimpleITK as sitk
from imaging_phantoms import phantom_ct, tumour_mask

SKILLS = ["tiny-seg-ct", "tiny-prognosis"]

# case id -> (age, RFS days, relapse); the risk stands in as the age, so by hand: pairs (1, 2) and (1, 3) are
# concordant (70 > 50, 70 > 60), pair (2, 3) is not (50 < 60): Harrell's C = 2/3.
PATIENTS = {
    "SYN-001": (70, 300, 1),
    "SYN-002": (50, 800, 1),
    "SYN-003": (60, 1500, 0),
    "SYN-004": (65, 400, 1),
}

BROKEN = "SYN-004"  # its CT file is cut short
WITHOUT_NODES = "SYN-003"  # its reference has no GTVn while the prediction has one


def write_cohort(root: Path) -> Path:
    """A HECKTOR 2022 layout folder: CT and label per case, endpoint and clinical CSVs; one CT truncated."""
    images, labels = root / "imagesTr", root / "labelsTr"
    images.mkdir(parents=True)
    labels.mkdir()
    ct = phantom_ct()
    for case_id in PATIENTS:
        mask = tumour_mask(ct)
        if case_id == WITHOUT_NODES:
            mask = sitk.ChangeLabel(mask, {2: 0})
        sitk.WriteImage(ct, str(images / f"{case_id}__CT.nii.gz"), useCompression=True)
        sitk.WriteImage(mask, str(labels / f"{case_id}.nii.gz"), useCompression=True)
    broken = images / f"{BROKEN}__CT.nii.gz"
    # Cut inside the NIfTI header. (SimpleITK 2.5 reads a .nii.gz cut later, in its voxel data, without an
    # error and fills the missing voxels with zeros.)
    broken.write_bytes(broken.read_bytes()[:100])
    with open(root / "hecktor2022_endpoint_training.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["PatientID", "Relapse", "RFS"])
        writer.writerows([case_id, relapse, rfs] for case_id, (_, rfs, relapse) in PATIENTS.items())
    with open(root / "hecktor2022_clinical_info_training.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["PatientID", "Gender", "Age"])
        writer.writerows([case_id, "M", age] for case_id, (age, _, _) in PATIENTS.items())
    return root


def read_summary(out: Path) -> dict[str, dict]:
    with open(out / "summary.csv", newline="") as stream:
        return {row["case_id"]: row for row in csv.DictReader(stream)}
