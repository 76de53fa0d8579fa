"""Training and evaluation of skills on real cohorts.

`datasets` reads HECKTOR 2022 layout folders and Decathlon-style datalists into `Case`s (and adds annotated
cases), `splits` makes seeded, stratified train / validation / test splits, `metrics` computes the reported
segmentation and prognosis metrics.
"""
