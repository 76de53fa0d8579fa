"""The panel's clinical fields -> the clinical record the `mafm3` core reads (its `ClinicalRecord` JSON).

Every field may stay unknown, and unknown is left out of the record (the core never guesses a value): the
choice lists start with UNKNOWN, and a number at its spin box minimum (0, shown as "unknown") is unknown.
The panel names fields in Slicer's camelCase (`performanceStatus`); the record in the core's snake_case
(`performance_status`). `panel_values` goes the other way (the demo study's record fills the panel).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

UNKNOWN = "unknown"

SEX_CHOICES = (UNKNOWN, "M", "F")
YES_NO_CHOICES = (UNKNOWN, "yes", "no")
PERFORMANCE_STATUS_CHOICES = (UNKNOWN, "0", "1", "2", "3", "4")  # ECOG
T_STAGE_CHOICES = (UNKNOWN, "Tx", "Tis", "T1", "T2", "T3", "T4", "T4a", "T4b")  # AJCC/UICC, head and neck
N_STAGE_CHOICES = (UNKNOWN, "Nx", "N0", "N1", "N2", "N2a", "N2b", "N2c", "N3", "N3a", "N3b")
M_STAGE_CHOICES = (UNKNOWN, "Mx", "M0", "M1")
TNM_EDITION_CHOICES = (UNKNOWN, "7", "8")  # AJCC/UICC edition of the stages
TNM_GROUP_CHOICES = (UNKNOWN, "0", "I", "II", "III", "IV", "IVA", "IVB", "IVC")

NUMBER_FIELDS = ("age", "weight")  # years, kg; 0 = unknown
NUMBER_RANGES = {"age": (0.0, 120.0), "weight": (0.0, 300.0)}  # what the panel's spin boxes accept
YES_NO_FIELDS = ("tobacco", "alcohol", "hpv", "surgery", "chemotherapy")
CLINICAL_FIELDS = (
    "age",
    "sex",
    "weight",
    "tobacco",
    "alcohol",
    "performanceStatus",
    "hpv",
    "surgery",
    "chemotherapy",
    "tStage",
    "nStage",
    "mStage",
    "tnmEdition",
    "tnmGroup",
)
CHOICES = {
    "sex": SEX_CHOICES,
    **{name: YES_NO_CHOICES for name in YES_NO_FIELDS},
    "performanceStatus": PERFORMANCE_STATUS_CHOICES,
    "tStage": T_STAGE_CHOICES,
    "nStage": N_STAGE_CHOICES,
    "mStage": M_STAGE_CHOICES,
    "tnmEdition": TNM_EDITION_CHOICES,
    "tnmGroup": TNM_GROUP_CHOICES,
}


def clinical_record(panel: Mapping[str, object]) -> dict:
    """The known clinical values of the panel as the core's record: snake_case keys, unknowns left out.

    `panel` maps each name of CLINICAL_FIELDS to its panel value (a float for NUMBER_FIELDS, else a choice).
    """
    record: dict = {}
    for name in CLINICAL_FIELDS:
        value = panel[name]
        if value == UNKNOWN or (name in NUMBER_FIELDS and value == 0):
            continue
        if name in YES_NO_FIELDS:
            value = value == "yes"
        elif name in ("performanceStatus", "tnmEdition"):
            value = int(value)
        record[_snake_case(name)] = value
    return record


def panel_values(record: Mapping[str, object]) -> dict:
    """The panel's values for a clinical record (core field names): what the record lacks, or holds in a form
    the panel does not offer, is unknown."""
    panel: dict = {}
    for name in CLINICAL_FIELDS:
        value = record.get(_snake_case(name))
        if name in NUMBER_FIELDS:
            panel[name] = float(value) if _number_in_range(name, value) else 0.0
            continue
        if name in YES_NO_FIELDS and isinstance(value, bool):
            value = "yes" if value else "no"
        elif (
            name in ("performanceStatus", "tnmEdition")
            and isinstance(value, int)
            and not isinstance(value, bool)
        ):
            value = str(value)
        panel[name] = value if value in CHOICES[name] else UNKNOWN
    return panel


def panel_problems(record: Mapping[str, object]) -> list[str]:
    """One sentence per number of `record` that the panel cannot show (out of its range), so it is left
    unknown there instead of raising inside the parameter node's observer."""
    problems = []
    for name in NUMBER_FIELDS:
        value = record.get(_snake_case(name))
        if value is not None and not _number_in_range(name, value):
            low, high = NUMBER_RANGES[name]
            problems.append(
                f"The study's {name} ({value!r}) is outside {low:g}-{high:g}, so it is left unknown; "
                "enter it "
                "by hand if it is right."
            )
    return problems


def _number_in_range(name: str, value: object) -> bool:
    low, high = NUMBER_RANGES[name]
    return isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high


def _snake_case(camel_case: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", camel_case).lower()
