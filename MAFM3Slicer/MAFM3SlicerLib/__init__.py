"""The Qt-free half of the MAFM3Slicer module: everything that needs MRML nodes but no widgets.

Importable under the `slicer-core` wheel (no Slicer application, no Qt), which is how `Testing/` exercises it.
Nothing here imports torch or the `mafm3` model: inference runs in the `mafm3` worker process, and volumes
cross over as files.

- `geometry`: volume nodes <-> SimpleITK images, RAS <-> LPS, exact.
- `volume_files`: volume nodes <-> .nrrd / .nii.gz files through MRML storage nodes.
- `study_check`: is the CT a CT, the PET a PET in SUV, do they overlap.
- `clinical`: the panel's clinical fields -> the core's clinical record.
"""
