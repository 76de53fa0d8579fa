"""An improved skill version as the panel shows it: the worker's `improve` result, read (Qt-free); and the
annotators' effort per skill version that improving should reduce (`effort_lines`).

The worker fine-tunes the skill's active version on the dataset's saved cases and compares the current and
the new version on held-out cases it never trained on (`mafm3.training.improve`; its result holds the content
of `comparison.json`). The module asks it not to install anything (`install` false): the panel shows the
comparison, and only when the core's gate found the new version not worse does it ask the annotator whether
to switch; switching installs the new pack beside the current one and makes it active.

`comparison.json`, as far as the panel reads it: `versions` {current, new: {id, version}},
`held_out_case_ids`, `scheme` ("holdout" or "folds"), `metrics` {current, new: `segmentation_summary` of
`mafm3.training.metrics`: `classes` {GTVp, GTVn: dice_mean, dice_mean_ci, hd95_mm_mean, hd95_mm_mean_ci},
dice_mean_over_classes}, `difference` {class: dice_mean, dice_mean_ci: new - current, paired by case},
`gate` {passed, reasons}. An interval is {low, high, confidence}; a value or interval may be missing or
null (no case with that class), and is then shown as "n/a".
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

VERSIONS = ("current", "new")  # `mafm3.training.improve.VERSIONS`


@dataclass(frozen=True)
class Estimate:
    """A mean over the held-out cases and its bootstrap interval (None: not reported)."""

    value: float | None
    low: float | None = None
    high: float | None = None

    @classmethod
    def read(cls, values: Mapping, key: str) -> Estimate:
        interval = values.get(f"{key}_ci") or {}
        return cls(_number(values.get(key)), _number(interval.get("low")), _number(interval.get("high")))

    def text(self, decimals: int, signed: bool = False) -> str:
        """e.g. "0.712 (0.650 to 0.771)"; "n/a" without a value."""
        if self.value is None:
            return "n/a"
        sign = "+" if signed else ""
        text = f"{self.value:{sign}.{decimals}f}"
        if self.low is not None and self.high is not None:
            text += f" ({self.low:{sign}.{decimals}f} to {self.high:{sign}.{decimals}f})"
        return text


@dataclass(frozen=True)
class ClassComparison:
    """One class (GTVp, GTVn) on the held-out cases: Dice and HD95 (mm) of both versions, Dice change."""

    name: str
    dice: dict[str, Estimate]  # by version: "current", "new"
    hd95_mm: dict[str, Estimate]
    dice_change: Estimate  # new - current, paired by case


@dataclass(frozen=True)
class Improvement:
    """What one `improve` job found (see the module docstring)."""

    skill_id: str
    current_version: str
    new_version: str
    pack: Path  # the new pack's folder (in the job folder until it is installed)
    not_worse: bool  # the core's gate: the new version may replace the current one
    reasons: tuple[str, ...]  # why the gate refused it
    message: str  # the core's sentence
    held_out_cases: int
    scheme: str
    classes: tuple[ClassComparison, ...]

    @classmethod
    def from_record(cls, record: Mapping) -> Improvement:
        """From the worker's `improve` result ({comparison, pack, installed, message}).

        Raises:
            KeyError: the record lacks the versions or the pack (an incompatible core).
        """
        comparison = record["comparison"]
        versions = comparison["versions"]
        metrics = comparison.get("metrics") or {}
        differences = comparison.get("difference") or {}
        names = list(dict.fromkeys(n for v in VERSIONS for n in (metrics.get(v) or {}).get("classes") or {}))
        gate = comparison.get("gate") or {}
        return cls(
            skill_id=str(versions["current"]["id"]),
            current_version=str(versions["current"]["version"]),
            new_version=str(versions["new"]["version"]),
            pack=Path(record["pack"]),
            not_worse=bool(gate.get("passed", False)),
            reasons=tuple(gate.get("reasons") or ()),
            message=str(record.get("message") or comparison.get("message") or ""),
            held_out_cases=len(comparison.get("held_out_case_ids") or ()),
            scheme=str(comparison.get("scheme") or ""),
            classes=tuple(
                ClassComparison(
                    name,
                    {v: Estimate.read(_class_metrics(metrics, v, name), "dice_mean") for v in VERSIONS},
                    {v: Estimate.read(_class_metrics(metrics, v, name), "hd95_mm_mean") for v in VERSIONS},
                    Estimate.read(differences.get(name) or {}, "dice_mean"),
                )
                for name in names
            ),
        )

    @property
    def summary(self) -> str:
        """One sentence for the panel: not worse (the panel then asks), or the core's why not."""
        if self.not_worse:
            return (
                f"{self.skill_id} {self.new_version} is not worse than {self.current_version} on "
                f"{self.held_out_cases} held-out cases."
            )
        return self.message

    @property
    def question(self) -> str:
        """What the panel asks before switching."""
        return (
            f"{self.skill_id} {self.new_version} is not worse than {self.current_version} on "
            f"{self.held_out_cases} held-out cases (see the comparison in the panel). Install it beside "
            f"{self.current_version} and switch to it? You can go back at any time."
        )

    def html(self) -> str:
        """The comparison as the panel shows it: one table row per class, then the verdict."""
        how = (
            "cases never trained on"
            if self.scheme != "folds"
            else "cases, each scored by a fold that never saw it"
        )
        header = (
            f"<b>{_escape(self.skill_id)}</b>: current {_escape(self.current_version)} vs new "
            f"{_escape(self.new_version)} on {self.held_out_cases} held-out {how}. Means with 95 % "
            "bootstrap intervals."
        )
        columns = ("Class", "Dice current", "Dice new", "Dice change", "HD95 current (mm)", "HD95 new (mm)")
        rows = [
            (
                row.name,
                row.dice["current"].text(3),
                row.dice["new"].text(3),
                row.dice_change.text(3, signed=True),
                row.hd95_mm["current"].text(1),
                row.hd95_mm["new"].text(1),
            )
            for row in self.classes
        ]
        table = (
            '<table border="1" cellspacing="0" cellpadding="3"><tr>'
            + "".join(f"<th>{_escape(c)}</th>" for c in columns)
            + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{_escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
            + "</table>"
        )
        if self.not_worse:  # the core's sentence tells how to install on the command line: the panel asks
            verdict = ["Not worse: the new version may replace the current one."]
        else:
            verdict = ["Worse: " + ("; ".join(self.reasons) or "the gate refused it") + ".", self.message]
        return "<br>".join([header, table, *map(_escape, verdict)])


def effort_lines(info: Mapping) -> list[str]:
    """The annotators' effort per skill version, from `mafm3 dataset info --json`: how close the predictions
    were to what was saved (mean Dice of prediction vs correction per segment; 1: nothing to change) and the
    mean editing time. It is what improving a skill should raise from version to version."""
    corrections = info.get("corrections") or {}
    lines = [
        f"{_cases(info.get('with_label', 0))} labelled, {corrections.get('cases_with_record', 0)} with a "
        "correction record."
    ]
    for version, entry in (corrections.get("by_skill_version") or {}).items():
        dice = ", ".join(
            f"{name} {_dice_text(values.get('mean_dice_prediction_vs_correction'))}"
            for name, values in entry.items()
            if isinstance(values, Mapping)
        )
        seconds = _number(entry.get("mean_editing_seconds"))
        editing = f"; {seconds:.0f} s editing on average" if seconds is not None else ""
        lines.append(
            f"{version.replace('@', ' ')}: {_cases(entry.get('cases', 0))}, Dice of prediction vs correction "
            f"{dice}{editing}."
        )
    return lines


def _cases(count: int) -> str:
    return f"{count} case" + ("" if count == 1 else "s")


def _dice_text(value) -> str:
    number = _number(value)
    return "n/a" if number is None else f"{number:.3f}"


def _class_metrics(metrics: Mapping, version: str, name: str) -> Mapping:
    return ((metrics.get(version) or {}).get("classes") or {}).get(name) or {}


def _number(value) -> float | None:
    """A finite float, or None for a missing, null or NaN value."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _escape(text: str) -> str:
    return html.escape(str(text), quote=False)
