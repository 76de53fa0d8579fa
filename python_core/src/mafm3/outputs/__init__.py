"""Writers: everything one run produces, in one output folder (`mafm3 run --out DIR`).

| file | when | written by |
|---|---|---|
| `segmentation.seg.nrrd` | segmentation | `write_seg_nrrd` (slicerio; names, colours, SNOMED codes) |
| `labels.nii.gz` | segmentation | `write_label_map` (uint8, CT grid) |
| `uncertainty.nii.gz` | segmentation | `write_uncertainty_map` (normalised entropy, %, uint8, CT grid) |
| `segmentation.dcm` | segmentation, `dicom_seg` or `sr` | `write_dicom_seg` (highdicom; DICOM CT only) |
| `segmentation.rtstruct.dcm` | segmentation, `rtstruct=True` | `write_rtstruct` (pydicom; DICOM CT only) |
| `report.sr.dcm` | `sr=True` | `write_structured_report` (TID 1500, highdicom; references the SEG) |
| `prognosis.json` | prognosis | `write_prognosis_json` |
| `report.html` | always | `write_report_html` |
| `ct_overlay.png`, `petct_overlay.png` | always; PET/CT with a PET | `write_report_html` |
| `survival_curve.png` | prognosis | `write_report_html` |
| `result.json` | always, last; lists every file above | `write_result_json` |

Folder policy: all files are written into a hidden staging folder beside `out_dir` (same file system) and the
folder is renamed into place at the end, so a failure leaves no half-written output and no staging folder.
`out_dir` may be absent or an empty folder. A non-empty `out_dir` is refused (before anything is written)
unless `overwrite=True`; then the old folder is kept until the new one is complete, renamed aside, replaced,
and only then deleted.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import SimpleITK as sitk

from mafm3.errors import MAFM3Error
from mafm3.outputs.dicom_seg import write_dicom_seg
from mafm3.outputs.json_io import write_prognosis_json, write_result_json
from mafm3.outputs.report import write_report_html
from mafm3.outputs.rtstruct import write_rtstruct
from mafm3.outputs.segmentation import (
    label_statistics,
    write_label_map,
    write_seg_nrrd,
    write_uncertainty_map,
)
from mafm3.outputs.structured_report import write_structured_report
from mafm3.results import StudyResult

SEG_NRRD = "segmentation.seg.nrrd"
LABEL_MAP = "labels.nii.gz"
UNCERTAINTY_MAP = "uncertainty.nii.gz"
DICOM_SEG = "segmentation.dcm"
RTSTRUCT = "segmentation.rtstruct.dcm"
STRUCTURED_REPORT = "report.sr.dcm"
PROGNOSIS_JSON = "prognosis.json"
RESULT_JSON = "result.json"

__all__ = [
    "check_output_dir",
    "write_dicom_seg",
    "write_label_map",
    "write_outputs",
    "write_prognosis_json",
    "write_report_html",
    "write_result_json",
    "write_seg_nrrd",
    "write_uncertainty_map",
]


def check_output_dir(out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Refuse an `out_dir` that is a file, a non-empty folder unless `overwrite`, or one that cannot be
    created or written (its nearest existing folder is not writable); call it before the work.

    Raises:
        MAFM3Error: with the sentence to show the user.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise MAFM3Error(f"The output path {out_dir} is a file; choose a folder for --out.")
    if out_dir.is_dir() and not overwrite and any(out_dir.iterdir()):
        raise MAFM3Error(
            f"The output folder {out_dir} is not empty; "
            "choose another folder or pass --overwrite to replace it."
        )
    # The staging folder is made beside `out_dir`, so its parent (or the nearest folder that exists) must be
    # writable; an existing `out_dir` is replaced by a rename, which needs the same permission.
    _check_writable_beside(out_dir, "folder")
    return out_dir


def check_output_file(path: str | Path) -> Path:
    """Refuse an output file `path` that is a folder or cannot be written (its nearest existing folder is not
    writable); call it before the work. Missing folders above it are made when it is written.

    Raises:
        MAFM3Error: with the sentence to show the user.
    """
    path = Path(path)
    if path.is_dir():
        raise MAFM3Error(f"The output path {path} is a folder; give --out a file name, such as {path}.json.")
    _check_writable_beside(path, "file")
    return path


def _check_writable_beside(path: Path, kind: str) -> None:
    existing = next(folder for folder in path.absolute().parents if folder.exists())
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".mafm3-write-check-", dir=existing))
    except OSError as error:
        raise MAFM3Error(
            f"The output {kind} {path} cannot be written ({existing}: {error.strerror}); "
            f"choose a writable --out {kind}."
        ) from error


def _apply_umask(folder: Path) -> None:
    """Give `folder` the mode a plain `mkdir` would (tempfile makes it 0700, whatever the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)


def _write_all(
    study: StudyResult,
    folder: Path,
    ct_image: sitk.Image,
    pet_image: sitk.Image | None,
    ct_dicom_paths: Sequence[str | Path] | None,
    dicom_seg: bool,
    rtstruct: bool,
    sr: bool,
) -> list[str]:
    """Write every output into `folder`; returns the file names, `result.json` last.

    The label files are written on a second thread while this one draws the report: compression and
    SimpleITK release the GIL, so the two overlap (matplotlib holds it).
    """
    segmentation = study.segmentation
    with ThreadPoolExecutor(max_workers=1) as pool:
        label_files = []
        if segmentation is not None:
            label_statistics(segmentation)  # checked and computed here, once, before both threads read them
            label_files = [
                pool.submit(write_seg_nrrd, segmentation, folder / SEG_NRRD),
                pool.submit(write_label_map, segmentation, folder / LABEL_MAP),
            ]
            if segmentation.uncertainty is not None:
                label_files.append(pool.submit(write_uncertainty_map, segmentation, folder / UNCERTAINTY_MAP))
            if dicom_seg or sr:
                label_files.append(
                    pool.submit(write_dicom_seg, segmentation, ct_dicom_paths, folder / DICOM_SEG)
                )
            if rtstruct:
                label_files.append(
                    pool.submit(write_rtstruct, segmentation, ct_dicom_paths, folder / RTSTRUCT)
                )
        written = []
        if study.prognosis is not None:
            written.append(write_prognosis_json(study.prognosis, folder / PROGNOSIS_JSON, demo=study.demo))
        written += write_report_html(study, ct_image, pet_image, folder)
        written = [future.result() for future in label_files] + written
    if sr:  # after the SEG it references
        seg_path = folder / DICOM_SEG if segmentation is not None else None
        written.append(
            write_structured_report(
                segmentation, study.prognosis, ct_dicom_paths, seg_path, folder / STRUCTURED_REPORT
            )
        )
    names = [path.name for path in written] + [RESULT_JSON]
    write_result_json(study, folder / RESULT_JSON, names)
    return names


def _move_into_place(staging: Path, out_dir: Path, overwrite: bool) -> None:
    """Rename `staging` to `out_dir`; with `overwrite`, an existing `out_dir` is moved aside, deleted last."""
    if out_dir.exists() and not overwrite:
        out_dir.rmdir()  # empty when checked: fails rather than delete files that appeared since
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return
    previous = staging.with_name(staging.name.removesuffix(".partial") + ".previous")
    os.replace(out_dir, previous)
    try:
        os.replace(staging, out_dir)
    except BaseException:
        os.replace(previous, out_dir)
        raise
    shutil.rmtree(previous)


def write_outputs(
    study: StudyResult,
    out_dir: str | Path,
    ct_image: sitk.Image,
    pet_image: sitk.Image | None = None,
    ct_dicom_paths: Sequence[str | Path] | None = None,
    *,
    dicom_seg: bool = False,
    rtstruct: bool = False,
    sr: bool = False,
    overwrite: bool = False,
) -> list[Path]:
    """Write all outputs of `study` into `out_dir`, all or nothing (see the folder policy above).

    ct_image: the input CT (HU); pet_image: the PET (SUV) on any grid; ct_dicom_paths: the CT's DICOM files,
    needed only for `dicom_seg`, `rtstruct` and `sr` (which writes the SEG too, to reference it). Returns
    the written files, `result.json` last.

    Raises:
        MAFM3Error: `out_dir` refused, DICOM SEG without a segmentation or a DICOM input, or a file-system
            error; `out_dir` is then as it was.
    """
    out_dir = check_output_dir(out_dir, overwrite=overwrite).absolute()
    for wanted, name, flag in ((dicom_seg, "DICOM SEG", "--dicom-seg"), (rtstruct, "RTSTRUCT", "--rtstruct")):
        if wanted and study.segmentation is None:
            raise MAFM3Error(f"{name} needs a segmentation result; add a segmentation skill or drop {flag}.")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
        _apply_umask(staging)
    except OSError as error:
        raise MAFM3Error(
            f"Cannot create the output folder {out_dir} ({error.strerror}); choose a writable --out folder."
        ) from error
    try:
        names = _write_all(study, staging, ct_image, pet_image, ct_dicom_paths, dicom_seg, rtstruct, sr)
        _move_into_place(staging, out_dir, overwrite)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise MAFM3Error(
            f"Writing the outputs into {out_dir} failed ({error}); {out_dir} was left as it was."
        ) from error
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [out_dir / name for name in names]
