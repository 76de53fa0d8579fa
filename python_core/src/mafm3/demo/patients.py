"""Synthetic patients: centre, clinical record, tumour burden and recurrence-free survival, without images.

Every case is fully determined by one integer `seed`; `sample_patient(seed)` draws the numbers here and
`mafm3.demo.study.generate_study(seed)` draws the images of the same patient from them. Each kind of
randomness has its own stream (`rng(seed, Stream.X)`), so drawing images never changes the patient.

Patient model (all draws independent unless stated):

| variable | distribution |
|---|---|
| centre | SYNA/SYNB/SYNC/SYND with probabilities 0.35/0.25/0.25/0.15 (`CENTRES`) |
| sex, age, weight | M with p 0.8; age N(61, 9.5) in [32, 89] years; weight N(82, 15) kg (M), N(68, 13) (F) |
| site | oropharynx (p 0.75) or larynx; side left/right 50/50 |
| HPV (true) | positive with p 0.65 (oropharynx) or 0.10 (larynx) |
| tobacco, alcohol | smoker with p 0.45 (HPV+) or 0.85 (HPV-); alcohol p 0.6 (smoker) or 0.3 |
| performance status | 0/1/2 with p 0.50/0.38/0.12 |
| GTVp volume V | log-normal, median 15 ml, log-SD 0.65, truncated to [5, 60] ml |
| GTVp SUVmax | ln SUVmax = ln 11 + 0.2 ln(V/15) - 0.1 HPV + N(0, 0.25), clipped to [6, 20] |
| node count | 0/1/2/3 with p 0.20/0.35/0.25/0.20 (HPV+) or 0.45/0.30/0.15/0.10 (HPV-) |
| each node | diameter d ~ U(10, 24) mm; level II first, then II/III/IV (p 0.5/0.3/0.2); ipsilateral p 0.85 |
| node uptake | SUVmax = clip(3 + 0.25 d + N(0, 1), 4, 10); necrotic core if d >= 16 mm with p 0.5 |
| M stage | M1 with p 0.03 |
| treatment | surgery p 0.2 (oropharynx) or 0.35 (larynx); chemotherapy p 0.85 if T3+ or N+, else 0.25 |

Staging (TNM 7th-edition-like, from the synthetic tumour): T1 if V < 8 ml, T2 if V < 20 ml, T3 if V < 40 ml,
else T4a; N0 without nodes, N1 one ipsilateral node (all nodes are <= 3 cm), N2b several ipsilateral nodes,
N2c any contralateral node.

Recurrence-free survival is a Weibull proportional-hazards model with shape k = 0.9 and time t in years:
cumulative hazard H(t) = exp(eta) * t**k, so T = (E * exp(-eta))**(1/k) with E ~ Exp(1), where the true
log-hazard is

    eta = -7.1 + 1.2 ln(V / ml) + 1.0 SUVmax / 10 + 0.45 n_nodes - 1.6 HPV
          + 0.3 [T4] + 1.5 [M1] + 0.2 performance_status + 0.25 tobacco

(HPV, tobacco: true values, 0/1). Censoring is independent: administrative end of follow-up U(3, 6) years
after diagnosis and loss to follow-up Exp(mean 25 years). RFS = min(T, censoring) in whole days (>= 1) and
Relapse = 1 when T came first. Over many patients this gives about 30 % events, a median RFS near 1300 days
and a C-index of the true log-hazard near 0.79.

The observed clinical record hides some truths, as HECKTOR's does: HPV is missing with p 0.25, tobacco 0.45,
alcohol 0.55, performance status 0.2 and weight 0.02 (age, sex, treatment and TNM are always given).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np

from mafm3.clinical import ClinicalRecord
from mafm3.demo.constants import CASES_PER_COHORT_SEED

WEIBULL_SHAPE = 0.9
LOG_HAZARD_COEFFICIENTS = {
    "intercept": -7.1,
    "ln_volume_ml": 1.2,
    "suv_max_over_10": 1.0,
    "n_nodes": 0.45,
    "hpv": -1.6,
    "t4": 0.3,
    "m1": 1.5,
    "performance_status": 0.2,
    "tobacco": 0.25,
}


class Stream(enum.IntEnum):
    """Independent random streams of one case."""

    PATIENT = 0
    MISSINGNESS = 1
    SURVIVAL = 2
    ANATOMY = 3
    LESIONS = 4
    CT_NOISE = 5
    PET_NOISE = 6
    ACQUISITION = 7


def rng(seed: int, stream: Stream) -> np.random.Generator:
    """The numpy generator of one stream of the case `seed`."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(stream)]))


def case_seed(cohort_seed: int, index: int) -> int:
    """Study seed of case `index` of the cohort `cohort_seed`: cohort_seed * 100000 + index (never shared)."""
    if not 0 <= index < CASES_PER_COHORT_SEED:
        raise ValueError(f"`index` must be in [0, {CASES_PER_COHORT_SEED}), got {index}")
    return int(cohort_seed) * CASES_PER_COHORT_SEED + index


@dataclass(frozen=True)
class Centre:
    """A synthetic scanner site: CT noise, PET grid, PET resolution and PET noise differ between centres."""

    center_id: int
    code: str
    ct_noise_hu: float  # SD of the CT noise
    pet_spacing_mm: tuple[float, float, float]  # (x, y, z)
    pet_fwhm_mm: float  # PET point-spread function, full width at half maximum
    pet_counts_per_suv: float  # Poisson noise: counts per voxel per unit SUV (higher = less noise)
    injected_mbq_per_kg: float


CENTRES = (
    Centre(1, "SYNA", 18.0, (4.0, 4.0, 4.0), 6.0, 60.0, 3.7),
    Centre(2, "SYNB", 22.0, (3.90625, 3.90625, 3.27), 6.5, 45.0, 4.0),
    Centre(3, "SYNC", 16.0, (4.07283, 4.07283, 3.0), 7.0, 80.0, 3.5),
    Centre(4, "SYND", 26.0, (3.64583, 3.64583, 3.27), 5.5, 40.0, 4.5),
)
_CENTRE_PROBABILITIES = (0.35, 0.25, 0.25, 0.15)


@dataclass(frozen=True)
class Node:
    """One metastatic lymph node (GTVn)."""

    diameter_mm: float  # equivalent-sphere diameter
    level: str  # neck level "II", "III" or "IV"
    side: int  # +1 = patient's left (+x in LPS), -1 = right
    suv_max: float
    necrotic: bool


@dataclass(frozen=True)
class Survival:
    """Recurrence-free survival as HECKTOR records it, plus the true log-hazard it was drawn from."""

    rfs_days: int
    relapse: bool
    log_hazard: float


@dataclass(frozen=True)
class Patient:
    """Everything about one synthetic case except its images."""

    seed: int
    centre: Centre
    site: str  # "oropharynx" or "larynx"
    side: int  # side of the primary tumour: +1 left, -1 right
    weight_kg: float  # true weight (the record may hide it; the PET header never does)
    hpv: bool  # true HPV status (the record may hide it)
    tobacco: bool
    tumour_volume_ml: float
    tumour_suv_max: float
    nodes: tuple[Node, ...]
    clinical: ClinicalRecord  # what a clinician would record (with missing values)
    survival: Survival


def t_stage(volume_ml: float) -> str:
    return "T1" if volume_ml < 8 else "T2" if volume_ml < 20 else "T3" if volume_ml < 40 else "T4a"


def n_stage(nodes: tuple[Node, ...], tumour_side: int) -> str:
    if not nodes:
        return "N0"
    if any(node.side != tumour_side for node in nodes):
        return "N2c"
    return "N1" if len(nodes) == 1 else "N2b"


def true_log_hazard(
    volume_ml: float, suv_max: float, n_nodes: int, hpv: bool, t: str, m: str, performance: int, tobacco: bool
) -> float:
    """The documented log-hazard `eta` (module docstring) of the Weibull recurrence model."""
    c = LOG_HAZARD_COEFFICIENTS
    return (
        c["intercept"]
        + c["ln_volume_ml"] * math.log(volume_ml)
        + c["suv_max_over_10"] * suv_max / 10
        + c["n_nodes"] * n_nodes
        + c["hpv"] * hpv
        + c["t4"] * t.startswith("T4")
        + c["m1"] * (m == "M1")
        + c["performance_status"] * performance
        + c["tobacco"] * tobacco
    )


def sample_survival(log_hazard: float, generator: np.random.Generator) -> Survival:
    """Draw RFS (days) and Relapse from the Weibull model with independent censoring (module docstring)."""
    event_years = (generator.exponential() * math.exp(-log_hazard)) ** (1 / WEIBULL_SHAPE)
    censor_years = min(generator.uniform(3.0, 6.0), generator.exponential(25.0))
    years = min(event_years, censor_years)
    return Survival(max(1, round(years * 365.25)), bool(event_years <= censor_years), log_hazard)


def _tumour_volume_ml(generator: np.random.Generator) -> float:
    while True:
        volume = math.exp(generator.normal(math.log(15.0), 0.65))
        if 5.0 <= volume <= 60.0:
            return volume


def _nodes(generator: np.random.Generator, hpv: bool, tumour_side: int) -> tuple[Node, ...]:
    count = generator.choice(4, p=(0.20, 0.35, 0.25, 0.20) if hpv else (0.45, 0.30, 0.15, 0.10))
    nodes = []
    for index in range(count):
        diameter = generator.uniform(10.0, 24.0)
        level = "II" if index == 0 else str(generator.choice(["II", "III", "IV"], p=(0.5, 0.3, 0.2)))
        side = tumour_side if generator.random() < 0.85 else -tumour_side
        suv_max = float(np.clip(3 + 0.25 * diameter + generator.normal(0, 1), 4, 10))
        necrotic = bool(diameter >= 16 and generator.random() < 0.5)
        nodes.append(Node(diameter, level, side, suv_max, necrotic))
    return tuple(nodes)


def sample_patient(seed: int) -> Patient:
    """Draw the synthetic patient of case `seed` (no images; cheap)."""
    g = rng(seed, Stream.PATIENT)
    centre = CENTRES[g.choice(len(CENTRES), p=_CENTRE_PROBABILITIES)]
    sex = "M" if g.random() < 0.8 else "F"
    age = float(round(np.clip(g.normal(61, 9.5), 32, 89)))
    weight = float(round(np.clip(g.normal(82, 15) if sex == "M" else g.normal(68, 13), 42, 150), 1))
    site = "oropharynx" if g.random() < 0.75 else "larynx"
    side = 1 if g.random() < 0.5 else -1
    hpv = bool(g.random() < (0.65 if site == "oropharynx" else 0.10))
    tobacco = bool(g.random() < (0.45 if hpv else 0.85))
    alcohol = bool(g.random() < (0.6 if tobacco else 0.3))
    performance = int(g.choice(3, p=(0.50, 0.38, 0.12)))
    volume = _tumour_volume_ml(g)
    suv_max = float(
        np.clip(math.exp(math.log(11) + 0.2 * math.log(volume / 15) - 0.1 * hpv + g.normal(0, 0.25)), 6, 20)
    )
    nodes = _nodes(g, hpv, side)
    t, n = t_stage(volume), n_stage(nodes, side)
    m = "M1" if g.random() < 0.03 else "M0"
    surgery = bool(g.random() < (0.2 if site == "oropharynx" else 0.35))
    advanced = t in ("T3", "T4a") or n != "N0"
    chemotherapy = bool(g.random() < (0.85 if advanced else 0.25))

    hide = rng(seed, Stream.MISSINGNESS).random(5) < (0.25, 0.45, 0.55, 0.2, 0.02)
    clinical = ClinicalRecord(
        age=age,
        sex=sex,
        weight=None if hide[4] else weight,
        tobacco=None if hide[1] else tobacco,
        alcohol=None if hide[2] else alcohol,
        performance_status=None if hide[3] else performance,
        hpv=None if hide[0] else hpv,
        surgery=surgery,
        chemotherapy=chemotherapy,
        t_stage=t,
        n_stage=n,
        m_stage=m,
    )
    log_hazard = true_log_hazard(volume, suv_max, len(nodes), hpv, t, m, performance, tobacco)
    survival = sample_survival(log_hazard, rng(seed, Stream.SURVIVAL))
    return Patient(seed, centre, site, side, weight, hpv, tobacco, volume, suv_max, nodes, clinical, survival)


def sample_patients(n: int, cohort_seed: int) -> list[Patient]:
    """The patients of `make-cohort --n n --seed cohort_seed`, without images."""
    return [sample_patient(case_seed(cohort_seed, index)) for index in range(n)]
