"""What the panel writes under Results for a finished run, from its result record (Qt-free)."""

from __future__ import annotations

from collections.abc import Mapping


def result_lines(record: Mapping) -> list[str]:
    """Plain-text lines for a worker's result record (result.json plus `out`): the demo disclaimer, each
    warning (one sentence each; none when the record has no `warnings`), each QC flag of the segmentation,
    the zero-shot classification, and where and how fast it ran."""
    lines = [record.get("disclaimer", "")] if record.get("demo") else []
    lines += [f"Warning: {warning}" for warning in record.get("warnings") or []]
    lines += [f"QC: {flag['message']}" for flag in (record.get("segmentation") or {}).get("qc_flags", [])]
    classification = record.get("classification")
    if classification:
        ranked = sorted(classification["probabilities"].items(), key=lambda item: -item[1])
        lines += ["Zero-shot classification:"] + [f"  {name}: {p:.0%}" for name, p in ranked]
    timings = record.get("timings_s", {})
    lines.append(f"Ran on {record.get('device', '?')} in {timings.get('total', float('nan')):.1f} s.")
    return lines
