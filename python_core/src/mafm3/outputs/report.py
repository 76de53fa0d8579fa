"""`report.html`: one page a clinician or researcher reads, with its PNG figures saved beside it.

The figures are separate PNG files rather than base64 data URIs: the issue asks for "PNG figures", they are
reusable as they are (slides, papers, the Slicer module), listed in `result.json`, and the HTML stays small
and readable. Only what the run produced is reported: no segmentation, no overlays (the planes then go
through the centre of the CT); no prognosis, no survival section.
"""

from __future__ import annotations

import html
import json
from datetime import datetime, timezone
from importlib.resources import files
from pathlib import Path
from string import Template

import numpy as np
import SimpleITK as sitk

from mafm3 import __version__
from mafm3.outputs.figures import (
    largest_lesion_centre_lps,
    physical_bounds_lps,
    render_planes_png,
    render_survival_png,
)
from mafm3.outputs.json_io import DEMO_DISCLAIMER, segment_records
from mafm3.results import SegmentationResult, StudyResult

REPORT_HTML = "report.html"
CT_FIGURE = "ct_overlay.png"
PETCT_FIGURE = "petct_overlay.png"
SURVIVAL_FIGURE = "survival_curve.png"


def _escape(value) -> str:
    return html.escape(value if isinstance(value, str) else json.dumps(value, default=str))


def _summary(value):
    """`value` with lists longer than 4 items replaced by their length (a DICOM series lists every file)."""
    if isinstance(value, dict):
        return {key: _summary(item) for key, item in value.items()}
    if isinstance(value, list | tuple) and len(value) > 4:
        return f"{len(value)} items"
    return value


def _table(header: list[str], rows: list[list[str]]) -> str:
    """An HTML table; cells are HTML already (escape text before)."""
    head = "".join(f"<th>{cell}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure(name: str, caption: str) -> str:
    caption = _escape(caption)
    return f'<figure><img src="{name}" alt="{caption}"><figcaption>{caption}</figcaption></figure>'


def _swatch(color: tuple[float, float, float]) -> str:
    rgb = ", ".join(str(round(255 * c)) for c in color)
    return f'<span class="swatch" style="background: rgb({rgb})"></span>'


MEASUREMENT_COLUMNS = (  # (header, field, format); SUV numbers are "—" without a PET
    ("volume (ml)", "volume_ml", "{:.2f}"),
    ("SUVmax", "suv_max", "{:.2f}"),
    ("SUVmean", "suv_mean", "{:.2f}"),
    ("SUVpeak", "suv_peak", "{:.2f}"),
    ("MTV (ml)", "mtv_ml", "{:.2f}"),
    ("TLG (g)", "tlg", "{:.1f}"),
    ("HU mean", "hu_mean", "{:.0f}"),
    ("uncertainty (%)", "uncertainty_percent", "{:.0f}"),
)


def _measurement_cells(record: dict) -> list[str]:
    return [
        "—" if record.get(key) is None else fmt.format(record[key]) for _, key, fmt in MEASUREMENT_COLUMNS
    ]


def qc_flags_html(segmentation: SegmentationResult) -> str:
    """The QC flags as a list, or a sentence saying there is none."""
    if not segmentation.qc_flags:
        return "<p>Quality control: no flag.</p>"
    items = "".join(f"<li>{_escape(flag.message)}</li>" for flag in segmentation.qc_flags)
    return f'<div class="flags"><b>Quality control</b><ul>{items}</ul></div>'


def _segmentation_section(segmentation: SegmentationResult) -> str:
    rows = []
    for spec, record in zip(segmentation.segments, segment_records(segmentation), strict=True):
        rows.append([_escape(spec.name), _swatch(spec.color), *_measurement_cells(record)])
        if len(record["components"]) > 1:
            for number, component in enumerate(record["components"], start=1):
                where = "LPS ({:.0f}, {:.0f}, {:.0f}) mm".format(*component["centroid_lps"])
                rows.append([_escape(f"{spec.name} {number} at {where}"), "", *_measurement_cells(component)])
    removed = "".join(
        "<li>{}</li>".format(_escape("label {label}: {volume_ml:.2f} ml, {reason}".format(**component)))
        for component in segmentation.removed
    )
    postprocessing = (
        f"<p>Postprocessing {_escape(segmentation.postprocessing)} removed:</p><ul>{removed}</ul>"
        if removed
        else ""
    )
    skill = f"{segmentation.skill_id} {segmentation.skill_version}"
    return (
        f"<section><h2>Segmentation</h2><p>Skill {_escape(skill)}. Measured on the CT grid; SUV from the PET "
        "resampled onto it (SUVpeak: PERCIST 1 ml sphere centred in the lesion; MTV: the segmented volume; "
        "TLG = SUVmean × MTV); one row per connected component below a segment with several.</p>"
        + _table(["segment", "colour", *(header for header, _, _ in MEASUREMENT_COLUMNS)], rows)
        + postprocessing
        + qc_flags_html(segmentation)
        + "</section>"
    )


def _warnings_section(warnings: list[str]) -> str:
    """What was repaired or looks doubtful in the inputs, first on the page."""
    items = "".join(f"<li>{_escape(warning)}</li>" for warning in warnings)
    return f'<section class="warnings"><h2>Warnings</h2><ul>{items}</ul></section>'


def _prognosis_section(study: StudyResult) -> str:
    prognosis = study.prognosis
    rows = [[f"{years} y", f"{100 * p:.1f}"] for years, p in sorted(prognosis.survival_at_years.items())]
    return (
        "<section><h2>Prognosis: recurrence-free survival</h2>"
        f"<p>Skill {_escape(prognosis.skill_id + ' ' + prognosis.skill_version)}. "
        f"Risk score <b>{prognosis.risk:.4f}</b> (higher means earlier recurrence); "
        f"risk group <b>{_escape(prognosis.risk_group)}</b>.</p>"
        + _table(["time", "probability free of recurrence (%)"], rows)
        + _figure(
            SURVIVAL_FIGURE,
            "Predicted recurrence-free survival S(t): linear between the model's time points, the same "
            "function the table reads; not drawn beyond the last point, where it is not estimable.",
        )
        + "</section>"
    )


def _classification_section(study: StudyResult) -> str:
    classification = study.classification
    ranked = sorted(classification.probabilities.items(), key=lambda item: -item[1])
    rows = [[_escape(name), f"{100 * p:.1f}"] for name, p in ranked]
    return (
        "<section><h2>Zero-shot classification</h2>"
        f"<p>Skill {_escape(classification.skill_id + ' ' + classification.skill_version)}.</p>"
        + _table(["finding", "probability present (%)"], rows)
        + "</section>"
    )


def _run_section(study: StudyResult) -> str:
    skills = [r for r in (study.segmentation, study.prognosis, study.classification) if r is not None]
    details = [
        ["device", _escape(study.device)],
        ["peak memory (RSS)", "—" if study.peak_rss_gb is None else f"{study.peak_rss_gb:.2f} GB"],
        ["skills", _escape(", ".join(f"{r.skill_id} {r.skill_version}" for r in skills) or "none")],
    ]
    details += [
        [f"backbone {_escape(key)}", f"<code>{_escape(value)}</code>"]
        for key, value in study.backbone.items()
    ]
    inputs = [[_escape(key), _escape(_summary(value))] for key, value in study.inputs.items()]
    timings = [[_escape(stage), f"{seconds:.2f}"] for stage, seconds in study.timings_s.items()]
    return (
        "<section><h2>Run</h2>"
        + _table(["item", "value"], details)
        + "<h3>Inputs</h3>"
        + _table(["input", "value"], inputs)
        + "<h3>Timings</h3>"
        + _table(["stage", "seconds"], timings)
        + "</section>"
    )


def _images_section(
    study: StudyResult, ct_image: sitk.Image, pet_image: sitk.Image | None, out_dir: Path
) -> tuple[str, list[Path]]:
    """CT (and PET/CT) planes through the largest lesion, or through the CT's centre when there is none."""
    segmentation = study.segmentation
    overlay, centre = {}, None
    if segmentation is not None:
        overlay = {"labels": segmentation.labels, "segments": segmentation.segments}
        centre = largest_lesion_centre_lps(segmentation.labels)
    if centre is not None:
        where = "through the centroid of the largest lesion, at LPS ({:.1f}, {:.1f}, {:.1f}) mm".format(
            *centre
        )
    else:
        centre = tuple(np.mean(physical_bounds_lps(ct_image), axis=0))
        where = "through the centre of the CT" + (
            " (no lesion was segmented)" if segmentation is not None else ""
        )
    written = [render_planes_png(out_dir / CT_FIGURE, ct_image, centre, title="CT", **overlay)]
    figures = _figure(CT_FIGURE, f"CT (window W400/L40): axial, coronal and sagittal planes {where}.")
    if pet_image is not None:
        petct = render_planes_png(
            out_dir / PETCT_FIGURE, ct_image, centre, pet=pet_image, title="PET/CT", **overlay
        )
        written.append(petct)
        figures += _figure(PETCT_FIGURE, f"PET (SUV, hot colour map) over CT: the same planes {where}.")
    return f"<section><h2>Images</h2>{figures}</section>", written


def write_report_html(
    study: StudyResult, ct_image: sitk.Image, pet_image: sitk.Image | None, out_dir: str | Path
) -> list[Path]:
    """Write `report.html` and its PNG figures into `out_dir`; returns the written paths, the HTML first.

    ct_image: the input CT (HU) in any orientation; pet_image: the PET (SUV) on any grid overlapping it.
    """
    out_dir = Path(out_dir)
    sections, written = _images_section(study, ct_image, pet_image, out_dir)
    if study.warnings:
        sections = _warnings_section(study.warnings) + sections
    if study.segmentation is not None:
        sections += _segmentation_section(study.segmentation)
    if study.prognosis is not None:
        written.append(render_survival_png(study.prognosis, out_dir / SURVIVAL_FIGURE))
        sections += _prognosis_section(study)
    if study.classification is not None:
        sections += _classification_section(study)
    sections += _run_section(study)

    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    template = Template((files("mafm3.outputs") / "report_template.html").read_text(encoding="utf-8"))
    page = template.substitute(
        title="MAFM3 report",
        subtitle=_escape(f"generated {generated} by mafm3 {__version__}"),
        banner=f'<div class="banner">{_escape(DEMO_DISCLAIMER)}</div>' if study.demo else "",
        sections=sections,
        footer="Research software: results are not validated for clinical decisions.",
    )
    report = out_dir / REPORT_HTML
    report.write_text(page, encoding="utf-8")
    return [report, *written]
