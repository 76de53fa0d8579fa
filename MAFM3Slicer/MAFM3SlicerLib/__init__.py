"""The Qt-free half of the MAFM3Slicer module: everything that needs MRML nodes or files but no widgets.

Importable under the `slicer-core` wheel (no Slicer application, no Qt), which is how `Testing/` exercises it.
Nothing here imports torch or the `mafm3` model: inference runs in the `mafm3` worker process, volumes cross
over as files, and only `skills` imports the core's JSON-only registry, when asked.

- `geometry`: volume nodes <-> SimpleITK images, RAS <-> LPS, exact.
- `volume_files`: volume nodes <-> .nrrd / .nii.gz files through MRML storage nodes.
- `study_check`: is the CT a CT, the PET a PET in SUV, do they overlap.
- `clinical`: the panel's clinical fields <-> the core's clinical record.
- `skills`: the skill packs the panel offers, filtered by the inputs at hand.
- `worker_client`: starts and talks to the warm worker (`python -m mafm3.worker`), recovers from crashes.
- `jobs`: a job's input files and run parameters; one job at a time through the worker, as panel updates.
- `result_nodes`: the worker's output folder -> segmentation, prognosis table and survival plot nodes.
- `result_text`: the lines the panel shows for a finished run (warnings, classification, timing).
- `hierarchy`: results beside their CT in the subject hierarchy.
- `logic`: `ModuleLogic`, what the module does (the module file's Logic is its Slicer shell).
- `dependencies`: is torch, every requirement of the core and the core itself installed in Slicer's Python;
  the install steps, constrained to every package Slicer already has.
- `install`: those steps run one after the other in the background, with their whole log.
- `commands`: the `mafm3` command lines run with Slicer's Python (demo study, skill install, add-case).
- `demo_study`: the synthetic PET/CT study shipped for the SampleData module (or made by the core).
- `self_test`: the body of the module's self-test.
- `training_case`: the annotator's case -> files for `mafm3 dataset add-case`.
- `errors`: `PanelError`, a problem the user can fix, in one sentence.
"""
