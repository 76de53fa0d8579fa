"""Training cohorts: HECKTOR 2022 layout folders and Decathlon-style datalists, read into `Case`s.

HECKTOR 2022 layout (what `read_hecktor` reads and `add_case` writes):

    DIR/imagesTr/<ID>__CT.nii.gz   CT, required (`.nii` accepted)
    DIR/imagesTr/<ID>__PT.nii.gz   PET, optional
    DIR/labelsTr/<ID>.nii.gz       label map, optional: 0 background, 1 GTVp, 2 GTVn
                                   (`<ID>.nii` and `<ID>_label.nii.gz` accepted)
    DIR/*endpoint*.csv             PatientID, Relapse (0/1), RFS (days)
    DIR/*clinical*.csv             PatientID, CenterID, Gender (M/F), Age, Weight, Tobacco, Alcohol,
                                   Performance status, HPV status (0=-, 1=+), Surgery, Chemotherapy
                                   (0/1 codes), optional T-stage, N-stage, M-stage, TNM edition (7/8),
                                   TNM group (the MAFM3 paper's CSV names); empty/NaN/NA = missing

Headers are matched case-insensitively. The cases are the IDs with a CT in imagesTr plus the IDs of the
endpoint CSV (each must have its CT); clinical rows of patients without images are ignored. The centre is the
CenterID value when it is a name; HECKTOR ships numeric CenterID codes, which give way to the patient-ID
prefix (`CHUM-001` -> `CHUM`) when there is one.

Datalist JSON (MONAI / Decathlon conventions): `{"training": [{"image": "ct.nii.gz" | ["ct.nii.gz",
"pet.nii.gz"], "label": "label.nii.gz"}, ...]}`, paths relative to the JSON's folder. Optional per-entry
keys of our own: `id`, `centre`, `relapse`, `rfs` (days), `clinical` (the fields of `mafm3.clinical`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from mafm3.clinical import ClinicalRecord
from mafm3.errors import MAFM3Error
from mafm3.files import atomic_write, atomic_write_text, file_sha256

LABEL_VALUES = frozenset({0, 1, 2})  # background, GTVp, GTVn
GRID_TOLERANCE = 1e-4  # mm (spacing, origin) and direction-cosine units
_MISSING = {"", "nan", "na", "n/a", "none", "null"}
_CLINICAL_COLUMNS = {  # HECKTOR 2022 clinical CSV header -> ClinicalRecord field
    "Gender": "sex",
    "Age": "age",
    "Weight": "weight",
    "Tobacco": "tobacco",
    "Alcohol": "alcohol",
    "Performance status": "performance_status",
    "HPV status (0=-, 1=+)": "hpv",
    "Surgery": "surgery",
    "Chemotherapy": "chemotherapy",
    "T-stage": "t_stage",
    "N-stage": "n_stage",
    "M-stage": "m_stage",
    "TNM edition": "tnm_edition",
    "TNM group": "tnm_group",
}
_TEXT_FIELDS = (
    "sex",
    "t_stage",
    "n_stage",
    "m_stage",
    "tnm_edition",
    "tnm_group",
)  # parsed by ClinicalRecord
REPORTS_CSV = "reports.csv"  # where `add_case` keeps a case's report
REPORT_COLUMNS = ("text", "report")  # the report column of a --reports CSV (the authors' CSV calls it `text`)
_FIELD_OF_HEADER = {header.lower(): field for header, field in _CLINICAL_COLUMNS.items()}
_CASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class Case:
    """One patient: image files, an optional label map, and the tabular data that goes with them."""

    case_id: str
    ct: Path
    pet: Path | None = None
    label: Path | None = None
    clinical: ClinicalRecord | None = None
    rfs_days: float | None = None
    relapse: bool | None = None
    centre: str | None = None

    @property
    def has_endpoint(self) -> bool:
        return self.rfs_days is not None and self.relapse is not None

    def files(self) -> list[Path]:
        return [path for path in (self.ct, self.pet, self.label) if path is not None]

    def content_sha256(self) -> str:
        """Hex sha256 of the case's content: the sha256 of each image file's bytes (CT, PET, label), tagged
        with its role. Unlike the case id it tells two cases apart that share an id (another site or release
        of a cohort) and recognises a case copied under another name; re-encoding a file changes it."""
        roles = {"ct": self.ct, "pet": self.pet, "label": self.label}
        listing = {role: file_sha256(path) for role, path in roles.items() if path is not None}
        return hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Cohort:
    """The cases of one dataset in case-id order; the readers check that every file exists."""

    source: Path
    layout: str  # "hecktor" or "datalist"
    cases: tuple[Case, ...]

    def __post_init__(self):
        duplicates = [case_id for case_id, n in Counter(c.case_id for c in self.cases).items() if n > 1]
        if duplicates:
            raise MAFM3Error(
                f"Case id {duplicates[0]} appears twice in {self.source}: give every case its own id."
            )

    def __len__(self) -> int:
        return len(self.cases)

    def __iter__(self) -> Iterator[Case]:
        return iter(self.cases)

    def select(self, case_ids: Iterable[str]) -> list[Case]:
        """The cases with these ids, in the order given (e.g. one side of a split)."""
        by_id = {case.case_id: case for case in self.cases}
        unknown = [case_id for case_id in case_ids if case_id not in by_id]
        if unknown:
            raise MAFM3Error(
                f"{len(unknown)} case id(s) of the split are not in {self.source} (the first is "
                f"{unknown[0]}): use a split made for this dataset."
            )
        return [by_id[case_id] for case_id in case_ids]

    def labelled(self) -> Cohort:
        return replace(self, cases=tuple(c for c in self.cases if c.label is not None))

    def with_endpoints(self) -> Cohort:
        return replace(self, cases=tuple(c for c in self.cases if c.has_endpoint))

    def with_reports(self, path: str | Path) -> Cohort:
        """The cohort with each case's report from the CSV `path` (`read_reports`) in its clinical record;
        cases the CSV does not name keep theirs."""
        reports = read_reports(path)

        def reported(case: Case) -> Case:
            if case.case_id not in reports:
                return case
            values = {**(case.clinical or ClinicalRecord()).to_dict(), "report": reports[case.case_id]}
            return replace(case, clinical=ClinicalRecord.from_dict(values))

        return replace(self, cases=tuple(reported(case) for case in self.cases))

    def check_files(self) -> None:
        missing = [path for case in self.cases for path in case.files() if not path.is_file()]
        if missing:
            raise MAFM3Error(
                f"{len(missing)} file(s) of the dataset {self.source} are missing, the first is "
                f"{missing[0]}: restore them or remove those cases."
            )

    def summary(self) -> dict:
        """Counts for `mafm3 dataset info`."""
        return {
            "source": str(self.source),
            "layout": self.layout,
            "cases": len(self.cases),
            "with_pet": sum(c.pet is not None for c in self.cases),
            "with_label": sum(c.label is not None for c in self.cases),
            "with_clinical": sum(c.clinical is not None for c in self.cases),
            "with_endpoint": sum(c.has_endpoint for c in self.cases),
            "events": sum(bool(c.relapse) for c in self.cases if c.has_endpoint),
            "centres": dict(sorted(Counter(c.centre or "unknown" for c in self.cases).items())),
        }


def load_cohort(path: str | Path) -> Cohort:
    """A HECKTOR 2022 layout folder, a datalist JSON, or a Decathlon folder with `dataset.json`."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".json":
        return read_datalist(path)
    has_ct = any((path / "imagesTr").glob("*__CT.nii*"))
    if (path / "dataset.json").is_file() and not has_ct:
        return read_datalist(path / "dataset.json")
    if (path / "imagesTr").is_dir():
        return read_hecktor(path)
    raise MAFM3Error(
        f"{path} is neither a HECKTOR 2022 folder (imagesTr/<ID>__CT.nii.gz) nor a datalist JSON: "
        "give the dataset folder or the datalist file."
    )


def read_hecktor(
    root: str | Path, *, endpoint_csv: Path | None = None, clinical_csv: Path | None = None
) -> Cohort:
    """Read a HECKTOR 2022 layout folder; the CSVs are found by glob in `root` unless given."""
    root = Path(root)
    images, labels = root / "imagesTr", root / "labelsTr"
    endpoints = _read_endpoints(find_csv(root, "endpoint", endpoint_csv))
    clinical_path = find_csv(root, "clinical", clinical_csv)
    clinical_rows = _read_rows(clinical_path) if clinical_path else {}
    ct_files = {_strip_suffix(p.name, "__CT"): p for p in images.glob("*__CT.nii*")}
    cases = []
    for case_id in sorted(set(ct_files) | set(endpoints)):
        row = clinical_rows.get(case_id, {})
        rfs_days, relapse = endpoints.get(case_id, (None, None))
        cases.append(
            Case(
                case_id=case_id,
                ct=ct_files.get(case_id, images / f"{case_id}__CT.nii.gz"),
                pet=_first_file(images / f"{case_id}__PT.nii.gz", images / f"{case_id}__PT.nii"),
                label=_first_file(
                    *(labels / f"{case_id}{tail}" for tail in (".nii.gz", ".nii", "_label.nii.gz"))
                ),
                clinical=_clinical_record(row, case_id, clinical_path),
                rfs_days=rfs_days,
                relapse=relapse,
                centre=_centre(case_id, row.get("centerid", "")),
            )
        )
    cohort = Cohort(source=root, layout="hecktor", cases=tuple(cases))
    cohort.check_files()
    return cohort


def read_datalist(path: str | Path, *, key: str = "training") -> Cohort:
    """Read the list `key` of a Decathlon-style datalist JSON; `image` may be `[ct, pet]`."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text())[key]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise MAFM3Error(
            f"Cannot read the list `{key}` of the datalist {path} ({error}): fix the JSON."
        ) from error

    # Resolved here rather than with monai.data.load_decathlon_datalist, which also turns any other string
    # value naming an existing path (a centre "MDA" beside a folder MDA/) into that path.
    def resolve(value: str) -> Path:
        return Path(os.path.abspath(path.parent / value))

    cases = []
    for entry in entries:
        entry = {"image": entry} if isinstance(entry, str) else entry  # a "test" list holds bare paths
        if not isinstance(entry, dict) or not entry.get("image"):
            raise MAFM3Error(
                f"An entry of `{key}` in {path} has no `image`: give every entry its image path."
            )
        images = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
        ct = resolve(images[0])
        case_id = str(entry.get("id") or _strip_suffix(ct.name.split(".")[0], "__CT"))
        relapse, rfs = entry.get("relapse"), entry.get("rfs")
        cases.append(
            Case(
                case_id=case_id,
                ct=ct,
                pet=resolve(images[1]) if len(images) > 1 else None,
                label=resolve(entry["label"]) if entry.get("label") else None,
                clinical=ClinicalRecord.from_dict(entry["clinical"]) if entry.get("clinical") else None,
                rfs_days=None if rfs is None else float(rfs),
                relapse=None if relapse is None else bool(int(relapse)),
                centre=str(entry["centre"]) if entry.get("centre") else None,
            )
        )
    cohort = Cohort(source=path, layout="datalist", cases=tuple(sorted(cases, key=lambda c: c.case_id)))
    cohort.check_files()
    return cohort


def find_csv(root: Path, kind: str, explicit: Path | None = None) -> Path | None:
    """The `*{kind}*.csv` of a dataset folder (None if there is none), or the explicit path after a check."""
    if explicit is not None:
        if not Path(explicit).is_file():
            raise MAFM3Error(f"The {kind} CSV {explicit} does not exist: check the path.")
        return Path(explicit)
    found = sorted(root.glob(f"*{kind}*.csv"))
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise MAFM3Error(
            f"{root} holds {len(found)} {kind} CSVs ({names}): keep one, or name the one to use."
        )
    return found[0] if found else None


def _read_rows(path: Path) -> dict[str, dict[str, str]]:
    """CSV rows keyed by PatientID, with lower-case, trimmed headers."""
    with open(path, newline="", encoding="utf-8-sig") as file:
        rows = [
            {str(k).strip().lower(): (v or "").strip() for k, v in row.items()}
            for row in csv.DictReader(file)
        ]
    if rows and "patientid" not in rows[0]:
        raise MAFM3Error(f"The CSV {path} has no PatientID column: add one with the case ids.")
    return {row["patientid"]: row for row in rows if row["patientid"]}


def read_reports(path: str | Path) -> dict[str, str]:
    """PatientID -> report text of a CSV with a PatientID column and a `text` (or `report`) column, such as
    the authors' `TNM_hector_prompts.csv`; empty cells are left out."""
    path = Path(path)
    if not path.is_file():
        raise MAFM3Error(f"The reports CSV {path} does not exist: check the path.")
    rows = _read_rows(path)
    if not rows:
        raise MAFM3Error(f"The reports CSV {path} holds no patient: add one row per case id.")
    column = next((name for name in REPORT_COLUMNS if name in next(iter(rows.values()))), None)
    if column is None:
        raise MAFM3Error(
            f"The reports CSV {path} has no `text` (or `report`) column: add one with each patient's report."
        )
    return {case_id: row[column] for case_id, row in rows.items() if row[column]}


def _read_endpoints(path: Path | None) -> dict[str, tuple[float | None, bool | None]]:
    """PatientID -> (RFS in days, relapse); missing cells give None."""
    endpoints = {}
    for case_id, row in (_read_rows(path) if path else {}).items():
        rfs, relapse = _number(row.get("rfs", "")), _number(row.get("relapse", ""))
        endpoints[case_id] = (rfs, None if relapse is None else bool(relapse))
    return endpoints


def _clinical_record(row: dict[str, str], case_id: str, path: Path | None) -> ClinicalRecord | None:
    """The clinical fields of a CSV row; None when the row holds none."""
    values = {}
    for header, cell in row.items():
        field = _FIELD_OF_HEADER.get("hpv status (0=-, 1=+)" if header.startswith("hpv") else header)
        if field and cell.lower() not in _MISSING:
            values[field] = cell if field in _TEXT_FIELDS else _number(cell)
    if not values:
        return None
    try:
        return ClinicalRecord.from_dict(values)
    except MAFM3Error as error:
        raise MAFM3Error(f"{path}, patient {case_id}: {error}") from error


def _centre(case_id: str, center_cell: str) -> str | None:
    if center_cell and _number(center_cell) is None and center_cell.lower() not in _MISSING:
        return center_cell
    if "-" in case_id:
        return case_id.split("-", 1)[0]
    return center_cell if center_cell and center_cell.lower() not in _MISSING else None


def _number(cell: str) -> float | None:
    try:
        value = float(cell)
    except ValueError:
        return None
    return None if np.isnan(value) else value


def _strip_suffix(name: str, suffix: str) -> str:
    name = name.split(".nii")[0]
    return name[: -len(suffix)] if name.endswith(suffix) else name


def _first_file(*candidates: Path) -> Path | None:
    return next((path for path in candidates if path.is_file()), None)


class CaseCache:
    """Preprocessed cases on disk: `<root>/<case_id>/<key>.safetensors`, arrays only (no pickle).

    The key hashes the case id, the preprocessing config (a JSON-able mapping, e.g. `dataclasses.asdict`
    of a preset) and each source file's name, size and modification time, so editing a case or the config
    preprocesses it again. Writes are atomic (temp file + rename), so DDP ranks may share one cache.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def key(self, case: Case, config: Mapping) -> str:
        sources = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in case.files()]
        text = json.dumps(
            {"case": case.case_id, "config": config, "sources": sources}, sort_keys=True, default=str
        )
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def get_or_create(
        self, case: Case, config: Mapping, preprocess: Callable[[Case], Mapping[str, np.ndarray]]
    ) -> dict[str, np.ndarray]:
        """The cached arrays of `case` under `config`, computed with `preprocess(case)` on a miss."""
        from safetensors.numpy import load_file, save_file

        path = self.root / case.case_id / f"{self.key(case, config)}.safetensors"
        if path.is_file():
            return load_file(path)
        arrays = {name: np.ascontiguousarray(array) for name, array in preprocess(case).items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: save_file(arrays, str(tmp)))
        return arrays


def add_case(
    dataset: str | Path,
    *,
    ct: str | Path,
    label: str | Path,
    pet: str | Path | None = None,
    clinical: ClinicalRecord | None = None,
    case_id: str | None = None,
    rfs_days: float | None = None,
    relapse: bool | None = None,
    centre: str | None = None,
    overwrite: bool = False,
    prediction: str | Path | None = None,
    editing_seconds: float | None = None,
) -> Case:
    """Add an annotated case to a HECKTOR 2022 layout folder (created if new) and return it as read back.

    prediction: the `mafm3 run` output folder whose segmentation the label corrects; its correction record
    (`training.corrections`, with `editing_seconds`) is written to `corrections/<case id>.json`. Replacing a
    case without one removes its old record.

    Images are converted to NIfTI with their geometry. The label must lie on the CT grid and hold only 0/1/2.
    The case id defaults to the CT's file name (without `__CT` and extensions). Clinical values (and the
    centre, as CenterID) and the endpoint update that patient's CSV rows; a report goes to `reports.csv`
    (PatientID, text), the file to give `--reports`. Everything is checked before anything is written; each
    file is written to a temp name and renamed.
    """
    import SimpleITK as sitk

    from mafm3.imaging.io import read_image, write_image
    from mafm3.imaging.validation import validate_ct, validate_volume
    from mafm3.training.corrections import FOLDER as CORRECTIONS
    from mafm3.training.corrections import correction_record

    root = Path(dataset)
    case_id = case_id or _strip_suffix(Path(ct).name.split(".")[0], "__CT")
    if not _CASE_ID.fullmatch(case_id):
        raise MAFM3Error(
            f"Case id {case_id!r} may hold only letters, digits, '.', '_' and '-': pass another id."
        )
    if (rfs_days is None) != (relapse is None):
        raise MAFM3Error("Give the RFS time and the relapse flag together, or neither.")
    if rfs_days is not None and not rfs_days >= 0:
        raise MAFM3Error(f"The RFS time must be a number of days >= 0, got {rfs_days}.")
    images, labels = root / "imagesTr", root / "labelsTr"
    old = read_hecktor(root).select([case_id])[0] if any(images.glob(f"{case_id}__CT.nii*")) else None
    if old and not overwrite:
        raise MAFM3Error(f"Case {case_id} already exists in {root}: pass --overwrite to replace it.")
    endpoint_csv, clinical_csv = find_csv(root, "endpoint"), find_csv(root, "clinical")

    ct_image = read_image(ct, "CT")[0]
    validate_ct(ct_image)
    pet_image = read_image(pet, "PT")[0] if pet else None
    if pet_image is not None:
        validate_volume(pet_image, "The PET")
    label_image = read_image(label)[0]
    validate_volume(label_image, "The label")
    _check_on_grid(label_image, ct_image, label)
    values = set(np.unique(sitk.GetArrayViewFromImage(label_image)).tolist())
    if not values <= LABEL_VALUES:
        raise MAFM3Error(
            f"The label {label} holds values {sorted(values)}: only 0, 1 (GTVp) and 2 (GTVn) are allowed."
        )
    label_image = sitk.Cast(label_image, sitk.sitkUInt8)
    if editing_seconds is not None and prediction is None:
        raise MAFM3Error(
            "--editing-seconds belongs to a correction: give the run it corrects with --prediction."
        )
    record = correction_record(prediction, label_image, case_id, editing_seconds) if prediction else None

    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    new_files = {images / f"{case_id}__CT.nii.gz": ct_image, labels / f"{case_id}.nii.gz": label_image}
    if pet_image is not None:
        new_files[images / f"{case_id}__PT.nii.gz"] = pet_image
    for path, image in new_files.items():
        atomic_write(path, lambda tmp, image=image: write_image(image, tmp))
    for stale in set(old.files() if old else []) - set(new_files):
        stale.unlink()
    record_path = root / CORRECTIONS / f"{case_id}.json"
    if record is not None:
        record_path.parent.mkdir(exist_ok=True)
        atomic_write_text(record_path, json.dumps(record, indent=2) + "\n")
    else:
        record_path.unlink(missing_ok=True)
    if rfs_days is not None:
        row = {"PatientID": case_id, "Relapse": _cell(bool(relapse)), "RFS": _cell(float(rfs_days))}
        _upsert_row(endpoint_csv or root / "endpoint.csv", row, ["PatientID", "Relapse", "RFS"])
    if clinical is not None or centre:
        row = {"PatientID": case_id, **(_clinical_cells(clinical) if clinical else {})}
        row.update({"CenterID": centre} if centre else {})
        _upsert_row(clinical_csv or root / "clinical.csv", row, ["PatientID", "CenterID", *_CLINICAL_COLUMNS])
    if clinical is not None and clinical.report:  # no HECKTOR column holds it: beside, for --reports
        _upsert_row(
            root / REPORTS_CSV, {"PatientID": case_id, "text": clinical.report}, ["PatientID", "text"]
        )
    return read_hecktor(root).select([case_id])[0]


def _check_on_grid(label, ct, label_path) -> None:
    """Same size, and spacing, origin and direction within `GRID_TOLERANCE`."""
    checks = {
        "size": (label.GetSize(), ct.GetSize()),
        "spacing": (label.GetSpacing(), ct.GetSpacing()),
        "origin": (label.GetOrigin(), ct.GetOrigin()),
        "direction": (label.GetDirection(), ct.GetDirection()),
    }
    for name, (got, expected) in checks.items():
        if not np.allclose(got, expected, rtol=0, atol=GRID_TOLERANCE if name != "size" else 0):
            raise MAFM3Error(
                f"The label {label_path} is not on the CT grid ({name} {tuple(got)} vs {tuple(expected)}): "
                "export it on the CT's geometry."
            )


def _clinical_cells(record: ClinicalRecord) -> dict[str, str]:
    """A ClinicalRecord as HECKTOR 2022 CSV cells: M/F, 0/1 codes, empty when missing."""
    return {header: _cell(getattr(record, field)) for header, field in _CLINICAL_COLUMNS.items()}


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    return f"{value:.10g}" if isinstance(value, float) else str(value)


def _upsert_row(path: Path, row: dict[str, str], header: list[str]) -> None:
    """Replace the cells of the row of `row["PatientID"]` (or append it), keeping other columns; atomic.

    Column names match the file's case-insensitively; a column is added only for a non-empty cell.
    """
    rows, fieldnames = [], list(header)
    if path.is_file():
        with open(path, newline="", encoding="utf-8-sig") as file:
            reader = csv.DictReader(file)
            rows, fieldnames = list(reader), list(reader.fieldnames or header)
    spelling = {name.strip().lower(): name for name in fieldnames}
    row = {spelling.get(name.lower(), name): value for name, value in row.items()}
    row = {name: value for name, value in row.items() if value or name in fieldnames}
    fieldnames += [name for name in row if name not in fieldnames]
    key = spelling.get("patientid", "PatientID")
    match = next((current for current in rows if (current.get(key) or "").strip() == row[key]), None)
    if match is None:
        rows.append(row)
    else:
        match.update(row)

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, fieldnames=fieldnames, restval="")
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)
