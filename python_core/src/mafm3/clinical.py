"""The clinical record of a head & neck cancer patient, as HECKTOR 2022 ships it.

Read from a JSON file (`mafm3 run --clinical FILE`), from HECKTOR's clinical CSV, or from the Slicer panel.
Every field is optional: a missing value is `None`, never a guessed default; the prognosis encoders turn
missingness into explicit indicator features.

JSON fields (all optional; unknown keys are refused so a typo is not silently ignored):

| field | type | meaning |
|---|---|---|
| `age` | number | years at diagnosis |
| `sex` | "M" / "F" | also "male" / "female" |
| `weight` | number | kg |
| `tobacco` | bool | current or former smoker |
| `alcohol` | bool | alcohol consumption |
| `performance_status` | int 0-4 | ECOG / Zubrod |
| `hpv` | bool | HPV (p16) positive |
| `surgery` | bool | surgery performed |
| `chemotherapy` | bool | chemotherapy given |
| `t_stage` | str | AJCC 8 head & neck: Tx, T0, Tis, T1 (T1a, T1b), T2, T3, T4 (T4a, T4b) |
| `n_stage` | str | Nx, N0, N1, N2 (N2a, N2b, N2c), N3 (N3a, N3b) |
| `m_stage` | str | Mx, M0, M1 |
| `tnm_edition` | int 7 / 8 | AJCC/UICC TNM edition the stages were given in (also "7th", "8th") |
| `tnm_group` | str | stage group: 0, I, II, III, IV, IVA, IVB, IVC (also "Stage IVA", "4a") |
| `report` | str | free-text report (the authors' LLM-written `text`), read by skills trained on reports |

Stages may omit their letter ("4a" is T4a for `t_stage`). A value outside these vocabularies is refused, one
sentence per bad field, rather than mapped to something else. The file is UTF-8 (a byte-order mark is
accepted) or UTF-16 with its byte-order mark.
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from mafm3.errors import MAFM3Error

_BOOL_FIELDS = ("tobacco", "alcohol", "hpv", "surgery", "chemotherapy")
_STAGE_VOCABULARIES = {  # AJCC 8th edition, head & neck (upper case, letter included)
    "t_stage": re.compile(r"T(X|0|IS|1[AB]?|2|3|4[AB]?)"),
    "n_stage": re.compile(r"N(X|0|1|2[ABC]?|3[AB]?)"),
    "m_stage": re.compile(r"M(X|0|1)"),
}
_STAGES_SHOWN = {
    "t_stage": "Tx, T0, Tis, T1-T4, T1a, T1b, T4a, T4b",
    "n_stage": "Nx, N0-N3, N2a-c, N3a-b",
    "m_stage": "Mx, M0, M1",
}
_SEXES = {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F"}
TNM_EDITIONS = (7, 8)  # AJCC/UICC editions in HECKTOR (the authors' CSV: 371 7th, 38 8th)
_TNM_EDITION = re.compile(r"([78])(\.0*|TH)?( EDITION)?")
_ROMAN_GROUPS = {"0": "0", "1": "I", "2": "II", "3": "III", "4": "IV"}
_TNM_GROUP = re.compile(r"(?:STAGE\s*)?(0|I{1,3}|IV|[0-4])([ABC]?)")


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
    tnm_edition: int | None = None
    tnm_group: str | None = None
    report: str | None = None

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
        problems = []
        for name, value in values.items():
            if value is None or (isinstance(value, str) and value.strip() == ""):
                continue
            try:
                clean[name] = _normalise(name, value)
            except MAFM3Error as error:
                problems.append(str(error))
        if problems:
            raise MAFM3Error(" ".join(problems))  # one sentence per bad field
        return cls(**clean)

    @classmethod
    def from_json(cls, path: str | Path) -> ClinicalRecord:
        try:
            values = json.loads(_text_of(path, "clinical file"))
        except json.JSONDecodeError as error:
            message = f"The clinical file {path} is not valid JSON (line {error.lineno}): fix it."
            raise MAFM3Error(message) from error
        if not isinstance(values, dict):
            raise MAFM3Error(f"The clinical file {path} must hold one JSON object of field: value pairs.")
        return cls.from_dict(values)

    def with_report(self, path: str | Path) -> ClinicalRecord:
        """This record with `report` read from a text file (`mafm3 run --report FILE`)."""
        report = _text_of(path, "report file").strip()
        if not report:
            raise MAFM3Error(f"The report file {path} is empty: write the patient's report in it.")
        return replace(self, report=report)


def _text_of(path: str | Path, what: str) -> str:
    """A file's text in UTF-8 with or without a byte-order mark, or UTF-16 with one; MAFM3Error if not."""
    try:
        raw = Path(path).read_bytes()
    except OSError as error:
        raise MAFM3Error(f"Cannot read the {what} {path} ({error.strerror}): check the path.") from error
    try:
        if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            return raw.decode("utf-16")
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        message = (
            f"The {what} {path} is not UTF-8 text (byte 0x{error.object[error.start]:02x} at "
            f"position {error.start}): save it as UTF-8."
        )
        raise MAFM3Error(message) from error


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
        sex = _SEXES.get(str(value).strip().upper())
        if sex is None:
            raise MAFM3Error(f"Clinical field `sex` must be 'M' or 'F' (or male / female), got {value!r}.")
        return sex
    if name == "tnm_edition":
        edition = _TNM_EDITION.fullmatch(str(value).strip().upper()) if not isinstance(value, bool) else None
        if edition is None:
            raise MAFM3Error(f"Clinical field `tnm_edition` must be 7 or 8 (the TNM edition), got {value!r}.")
        return int(edition.group(1))
    if name == "tnm_group":
        group = _TNM_GROUP.fullmatch(str(value).strip().upper())
        # Sub-groups A-C exist for stage IV only (AJCC 7 and 8, head and neck).
        if group is None or (group.group(2) and _ROMAN_GROUPS.get(group.group(1), group.group(1)) != "IV"):
            raise MAFM3Error(
                f"Clinical field `tnm_group` must be a stage group (0, I, II, III, IV, IVA, IVB, IVC), "
                f"got {value!r}."
            )
        return _ROMAN_GROUPS.get(group.group(1), group.group(1)) + group.group(2)
    if name == "report":
        if not isinstance(value, str):
            raise MAFM3Error(f"Clinical field `report` must be text, got {type(value).__name__}.")
        return value.strip()
    stage = str(value).strip().upper()
    prefix = {"t_stage": "T", "n_stage": "N", "m_stage": "M"}[name]
    if not stage.startswith(prefix):
        stage = prefix + stage
    if not _STAGE_VOCABULARIES[name].fullmatch(stage):
        raise MAFM3Error(
            f"Clinical field `{name}` must be an AJCC stage ({_STAGES_SHOWN[name]}), got {value!r}."
        )
    return stage[0] + stage[1:].lower()
