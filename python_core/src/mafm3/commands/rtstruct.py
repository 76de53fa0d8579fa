"""`mafm3 rtstruct`: a GTVp/GTVn label map on a DICOM CT's grid -> an RTSTRUCT for radiotherapy planning.

For segmentations reviewed or drawn after a run (Slicer's export without SlicerRT uses it); `mafm3 run
--rtstruct` writes the model's own contours directly.
"""

from __future__ import annotations

import argparse

HELP = "write an RTSTRUCT from a label map (1 GTVp, 2 GTVn) on a DICOM CT's grid"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ct", required=True, help="the CT's DICOM folder (or one file of its series)")
    parser.add_argument("--labels", required=True, help="label map on the CT grid: 1 GTVp, 2 GTVn")
    parser.add_argument("--out", required=True, help="the RTSTRUCT file to write (.dcm)")


def run(args: argparse.Namespace) -> int:
    import SimpleITK as sitk

    from mafm3.errors import MAFM3Error
    from mafm3.imaging import read_image, resample_onto
    from mafm3.outputs.rtstruct import write_rtstruct
    from mafm3.results import HEAD_NECK_TUMOUR_SEGMENTS, SegmentationResult

    ct, source = read_image(args.ct, "CT")
    if not source.get("files"):
        raise MAFM3Error(f"{args.ct} is not a DICOM CT series; an RTSTRUCT must cite the CT's DICOM files.")
    labels = read_image(args.labels)[0]
    if labels.GetSize() != ct.GetSize():
        raise MAFM3Error(
            f"The label map is {labels.GetSize()} voxels and the CT {ct.GetSize()}; export it on the CT grid."
        )
    on_ct = resample_onto(sitk.Cast(labels, sitk.sitkUInt8), ct, "nearest", 0)  # same voxels, CT's header
    result = SegmentationResult(on_ct, list(HEAD_NECK_TUMOUR_SEGMENTS), "reviewed", "1")
    write_rtstruct(result, source["files"], args.out, generation="SEMIAUTOMATIC")
    print(args.out)
    return 0
