"""`report.html`: links only figures that exist, shows what the run produced and nothing it did not."""

from __future__ import annotations

import re

import numpy as np
import SimpleITK as sitk
from matplotlib.image import imread

from mafm3.outputs.json_io import DEMO_DISCLAIMER
from mafm3.outputs.report import write_report_html
from mafm3.results import GTVN, GTVP, ClassificationResult, PrognosisResult, SegmentationResult, StudyResult


def _images() -> tuple[sitk.Image, sitk.Image, sitk.Image]:
    """(CT: a soft-tissue box in air; labels: GTVp and GTVn boxes inside it; PET: on its own coarser grid)."""
    hu = np.full((16, 36, 40), -1000, dtype=np.int16)
    hu[2:14, 6:30, 5:35] = 40
    labels = np.zeros(hu.shape, dtype=np.uint8)
    labels[5:10, 10:18, 20:30] = GTVP.label
    labels[6:9, 20:25, 8:13] = GTVN.label
    ct = sitk.GetImageFromArray(hu)
    ct.SetSpacing((1.0, 1.2, 3.0))
    ct.SetOrigin((-20.0, -22.0, -30.0))
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(ct)
    pet = sitk.Resample(
        sitk.Cast(label_image, sitk.sitkFloat32) * 4.0 + 1.0,
        (20, 18, 16),
        sitk.Transform(),
        sitk.sitkLinear,
        (-21.0, -23.0, -31.0),
        (2.0, 2.4, 3.0),
    )
    return ct, label_image, pet


def _study(*, segmentation=True, prognosis=True, classification=True, demo=False) -> StudyResult:
    _, labels, _ = _images()
    return StudyResult(
        inputs={"ct": "/data/<patient>/ct.nii.gz", "pet": {"files": [f"/dicom/{i}.dcm" for i in range(300)]}},
        segmentation=SegmentationResult(labels, [GTVP, GTVN], "hecktor-seg-petct", "1.1.0")
        if segmentation
        else None,
        prognosis=PrognosisResult(
            0.42,
            "low",
            [0.0, 365.0, 730.0, 1095.0, 1825.0],
            [1.0, 0.9, 0.8, 0.75, 0.7],
            {1: 0.9, 2: 0.8, 3: 0.75, 5: 0.7},
            "hecktor-rfs-petct",
            "2.0.1",
        )
        if prognosis
        else None,
        classification=ClassificationResult(
            {"mass": 0.2, "lymphadenopathy": 0.9}, "ctclip-zero-shot", "1.0.0"
        )
        if classification
        else None,
        timings_s={"inference": 3.5},
        device="cpu",
        backbone={"id": "ct-clip-vit-b", "sha256": "0f" * 32},
        demo=demo,
        peak_rss_gb=1.25,
    )


def _linked_images(html: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', html)


def test_report_links_existing_non_trivial_figures_and_shows_every_result(tmp_path):
    ct, _, pet = _images()
    written = write_report_html(_study(), ct, pet, tmp_path)

    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    linked = _linked_images(html)
    assert linked == ["ct_overlay.png", "petct_overlay.png", "survival_curve.png"]
    assert [p.name for p in written] == ["report.html", *linked]
    for name in linked:
        pixels = imread(tmp_path / name)[..., :3]
        assert pixels.std() > 0.05, name
    overlay = imread(tmp_path / "ct_overlay.png")[..., :3]
    assert np.all(np.abs(overlay - np.array(GTVP.color)) <= 0.04, axis=-1).sum() > 20
    assert np.all(np.abs(overlay - np.array(GTVN.color)) <= 0.04, axis=-1).sum() > 5

    voxel_ml = 1.0 * 1.2 * 3.0 / 1000
    assert f"{5 * 8 * 10 * voxel_ml:.2f}" in html and f"{3 * 5 * 5 * voxel_ml:.2f}" in html
    assert "largest lesion" in html
    assert "<b>low</b>" in html and "0.4200" in html
    assert html.index("lymphadenopathy") < html.index("mass")  # ranked by probability
    assert "0f" * 32 in html and "hecktor-seg-petct 1.1.0" in html
    assert "/data/&lt;patient&gt;/ct.nii.gz" in html  # text is escaped
    assert "300 items" in html and "/dicom/299.dcm" not in html  # long file lists are summarised
    assert DEMO_DISCLAIMER not in html


def test_demo_report_carries_the_banner(tmp_path):
    ct, _, _ = _images()
    write_report_html(_study(demo=True), ct, None, tmp_path)
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert f'<div class="banner">{DEMO_DISCLAIMER}</div>' in html


def test_report_without_segmentation_pet_or_prognosis_shows_only_the_ct(tmp_path):
    ct, _, _ = _images()
    written = write_report_html(_study(segmentation=False, prognosis=False), ct, None, tmp_path)

    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert _linked_images(html) == ["ct_overlay.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)
    assert "centre of the CT" in html
    assert "Segmentation</h2>" not in html and "Prognosis" not in html
    overlay = imread(tmp_path / "ct_overlay.png")[..., :3]
    assert np.all(np.abs(overlay - np.array(GTVP.color)) <= 0.04, axis=-1).sum() == 0


def test_report_shows_each_lesion_s_numbers_and_the_qc_flags_and_dashes_without_pet(tmp_path):
    from mafm3.imaging.measurements import measure_lesions
    from mafm3.results import QCFlag

    ct, labels, pet = _images()
    study = _study(prognosis=False, classification=False)
    segmentation = study.segmentation
    segmentation.measurements = measure_lesions(labels, [1, 2], ct, pet)
    segmentation.qc_flags = [QCFlag("roi-border", "GTVn reaches the edge of the region the model analysed.")]
    html = (tmp_path / write_report_html(study, ct, pet, tmp_path)[0].name).read_text()
    gtvp = segmentation.measurements[1]
    assert f"<td>{gtvp.suv_max:.2f}</td>" in html and f"<td>{gtvp.suv_peak:.2f}</td>" in html
    assert "GTVn reaches the edge of the region the model analysed." in html

    segmentation.measurements = measure_lesions(labels, [1, 2], ct)  # no PET
    segmentation.qc_flags = []
    html = (tmp_path / write_report_html(study, ct, None, tmp_path)[0].name).read_text()
    row = re.search(r"<tr><td>GTVp</td>.*?</tr>", html).group(0)
    assert row.count("<td>—</td>") == 6  # SUVmax/mean/peak, MTV, TLG, uncertainty: absent, not 0
    assert "Quality control: no flag." in html
