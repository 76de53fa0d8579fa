"""Synthetic head & neck PET/CT studies for the demo: "demo - synthetic data, not for clinical use".

Seeded and deterministic: the same seed gives the same arrays, byte for byte.

- `patients`: `sample_patient(seed)` / `sample_patients(n, cohort_seed)`: clinical record, tumour burden and
  recurrence-free survival from the documented hazard model, without images (cheap).
- `study`: `generate_study(seed, size)` -> `SyntheticStudy` (CT, PET on its own grid, GTVp/GTVn label map,
  tissue map, patient, PET acquisition for the DICOM header).
- `anatomy`, `lesions`, `grid`: the phantom behind it; `constants`: CT grid sizes, the notice, seeds.
- `writers`: `write_study` (one folder) and `write_cohort` (HECKTOR 2022 layout); `dicom`: CT and PET series.

The package imports nothing heavy itself, so `mafm3 --help` stays fast; import the modules you need.
"""
