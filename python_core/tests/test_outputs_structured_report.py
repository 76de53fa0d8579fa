"""DICOM SR (TID 1500): written after the SEG, parsed and validated by highdicom, and its numbers read back.

Oracle: the numbers put into the result (arbitrary, distinct values) must come back from the SR unchanged,
each under its own concept, derivation and unit, in a group that references the right SEG segment.
"""

from __future__ import annotations

import math

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from ct_series import write_ct_series

from mafm3.errors import MAFM3Error
from mafm3.outputs.dicom_seg import write_dicom_seg
from mafm3.outputs.structured_report import write_structured_report
from mafm3.results import GTVN, GTVP, PrognosisResult, SegmentationResult, SegmentMeasurements

GTVP_NUMBERS = SegmentMeasurements(
    volume_ml=12.5,
    hu_mean=41.0,
    suv_max=9.25,
    suv_mean=4.5,
    suv_peak=7.75,
    mtv_ml=12.5,
    tlg=56.25,
    uncertainty_percent=14.0,
    centroid_lps=(1.0, 2.0, 3.0),
)
PROGNOSIS = PrognosisResult(
    risk=1.375,
    risk_group="high",
    times_days=[0.0, 400.0, 900.0, 1500.0],
    survival=[1.0, 0.8, 0.6, 0.45],
    survival_at_years={1: 0.8125, 2: 0.6875, 3: 0.5, 5: math.nan},
    skill_id="demo-prognosis",
    skill_version="1.0.0",
)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ct")
    direction = np.array(sitk.VersorTransform((0.3, -0.2, 1.0), 0.4).GetMatrix()).reshape(3, 3)
    paths, image = write_ct_series(
        folder, size_xyz=(20, 18, 6), spacing_xyz=(1.0, 1.0, 2.0), origin_lps=(0, 0, 0), direction=direction
    )
    labels_zyx = np.zeros((6, 18, 20), dtype=np.uint8)
    labels_zyx[2:4, 5:9, 5:9] = GTVP.label  # GTVn stays empty: it gets no group
    labels = sitk.GetImageFromArray(labels_zyx)
    labels.CopyInformation(image)
    segmentation = SegmentationResult(
        labels, [GTVP, GTVN], "demo-seg-petct", "1.0.0", measurements={1: GTVP_NUMBERS, 2: None}
    )
    seg_path = write_dicom_seg(segmentation, paths, folder.parent / "segmentation.dcm")
    return paths, segmentation, seg_path


def _numbers(group) -> dict:
    """{(concept meaning, derivation meaning or None): (value, unit value)} of a measurement group."""
    numbers = {}
    for measurement in group.get_measurements():
        derivation = measurement.derivation.meaning if measurement.derivation is not None else None
        numbers[(measurement.name.meaning, derivation)] = (measurement.value, measurement.unit.value)
    return numbers


def test_sr_holds_the_measurements_per_seg_segment_and_the_prognosis(study, tmp_path):
    paths, segmentation, seg_path = study
    path = write_structured_report(segmentation, PROGNOSIS, paths, seg_path, tmp_path / "report.sr.dcm")
    sr = hd.sr.srread(path)  # highdicom parses and checks the TID 1500 structure
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    seg = pydicom.dcmread(seg_path)

    volumetric = sr.content.get_volumetric_roi_measurement_groups()
    assert len(volumetric) == 1  # the empty GTVn is not reported
    group = volumetric[0]
    assert group.tracking_identifier == "GTVp"
    assert group.finding_type.value == GTVP.type.value
    referenced = group.referenced_segment
    assert referenced.referenced_sop_instance_uid == seg.SOPInstanceUID
    assert list(referenced.referenced_segment_numbers) == [1]
    assert seg.SegmentSequence[0].SegmentLabel == "GTVp"
    assert _numbers(group) == {
        ("Volume", None): (12.5, "ml"),
        ("SUVbw", "Maximum"): (9.25, "g/ml{SUVbw}"),
        ("SUVbw", "Mean"): (4.5, "g/ml{SUVbw}"),
        ("SUVbw", "Peak Value Within ROI"): (7.75, "g/ml{SUVbw}"),
        ("Metabolic Volume", None): (12.5, "ml"),
        ("Total Lesion Glycolysis", None): (56.25, "g"),
        ("Attenuation Coefficient", "Mean"): (41.0, "[hnsf'U]"),
        ("Mean normalised entropy of class probabilities", "Mean"): (14.0, "%"),
    }

    (prognosis,) = sr.content.get_image_measurement_groups()
    assert prognosis.tracking_identifier == "prognosis"
    assert {name: value for (name, _), (value, _) in _numbers(prognosis).items()} == {
        "Recurrence risk score": 1.375,
        "Recurrence-free survival at 1 years": 0.8125,
        "Recurrence-free survival at 2 years": 0.6875,
        "Recurrence-free survival at 3 years": 0.5,
    }  # 5 years lies beyond the curve: not reported rather than NaN
    (evaluation,) = prognosis.get_qualitative_evaluations()
    assert evaluation.value.value == "high"


def test_sr_without_a_dicom_ct_is_refused_with_what_to_do(study, tmp_path):
    _, segmentation, seg_path = study
    with pytest.raises(MAFM3Error, match="DICOM SR needs a DICOM CT input"):
        write_structured_report(segmentation, None, None, seg_path, tmp_path / "sr.dcm")
