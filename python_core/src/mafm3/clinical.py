"""The clinical record of a head & neck cancer patient, as HECKTOR 2022 ships it.

Read from a JSON file (`mafm3 run --clinical FILE`), from HECKTOR's clinical CSV, or from the Slicer panel.
Every field is optional: a missing value is `None`, never a guessed default; the prognosis encoders turn
missingness into explicit indicator features.

JSON fields (all optional; unknown keys are refused so a typo is not silently ignored):

| field | type | meaning |
|---|---|---|
| `age` | number | years at diagnosis |
| `sex` | "M" / "F" | |
| `weight` | number | kg |
| `tobacco` | bool | current or former smoker |
| `alcohol` | bool | alcohol consumption |
| `performance_status` | int 0-4 | ECOG / Zubrod |
| `hpv` | bool | HPV (p16) positive |
| `surgery` | bool | surgery performed |
| `chemotherapy` | bool | chemotherapy given |
| `t_stage` | str | "T1".."T4b" (also "Tx", "Tis") |
| `n_stage` | str | "N0".."N3b" |
| `m_stage` | str | "M0" / "M1" |
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from mafm3.errors import MAFM3Error

_BOOL_FIELDS = ("tobacco", "alcohol", "hpv", "surgery", "chemotherapy")


@dataclass(frozen=True)
class ClinicalRecord:
    age: float | None = None
    sex: str | None = None
    weight: float | None = None
    tobacco: bool | None = None
    alcohol: bool | None = None
    performance_status: int | None = None
    hpv: bool | None = None
    surgery: bool | None = None
    chemotherapy: bool | None = None
    t_stage: str | None = None
    n_stage: str | None = None
    m_stage: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ClinicalRecord:
        """Validate and normalise a dict of clinical values; raises `MAFM3Error` on a bad field."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise MAFM3Error(
                f"Unknown clinical field(s) {', '.join(unknown)}: use only {', '.join(sorted(known))}."
            )
        clean: dict = {}
        for name, value in values.items():
            if value is None or (isinstance(value, str) and value.strip() == ""):
                continue
            clean[name] = _normalise(name, value)
        return cls(**clean)

    @classmethod
    def from_json(cls, path: str | Path) -> ClinicalRecord:
        try:
            values = json.loads(Path(path).read_text())
        except OSError as error:
            message = f"Cannot read the clinical file {path} ({error.strerror}): check the path."
            raise MAFM3Error(message) from error
        except json.JSONDecodeError as error:
            message = f"The clinical file {path} is not valid JSON (line {error.lineno}): fix it."
            raise MAFM3Error(message) from error
        if not isinstance(values, dict):
            raise MAFM3Error(f"The clinical file {path} must hold one JSON object of field: value pairs.")
        return cls.from_dict(values)


def _normalise(name: str, value):
    if name in _BOOL_FIELDS:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in ("yes", "no", "true", "false", "1", "0"):
            return value.strip().lower() in ("yes", "true", "1")
        raise MAFM3Error(f"Clinical field `{name}` must be true or false, got {value!r}.")
    if name in ("age", "weight"):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise MAFM3Error(f"Clinical field `{name}` must be a number, got {value!r}.") from None
        limit = 130 if name == "age" else 400
        if not 0 < number < limit:
            raise MAFM3Error(f"Clinical field `{name}` must be between 0 and {limit}, got {number}.")
        return number
    if name == "performance_status":
        if isinstance(value, bool) or not (isinstance(value, (int, float)) and int(value) == value):
            raise MAFM3Error(f"Clinical field `performance_status` must be an integer 0-4, got {value!r}.")
        if not 0 <= int(value) <= 4:
            raise MAFM3Error(f"Clinical field `performance_status` must be between 0 and 4, got {value}.")
        return int(value)
    if name == "sex":
        sex = str(value).strip().upper()[:1]
        if sex not in ("M", "F"):
            raise MAFM3Error(f"Clinical field `sex` must be 'M' or 'F', got {value!r}.")
        return sex
    stage = str(value).strip()
    prefix = {"t_stage": "T", "n_stage": "N", "m_stage": "M"}[name]
    if not stage.upper().startswith(prefix):
        stage = prefix + stage
    return stage[0].upper() + stage[1:].lower()
