"""`mafm3 improve`: a segmentation skill fine-tuned on an annotator's corrected cases, measured against the
version it started from on cases it never trained on, and installed only if it is not worse.

1. Base: the skill's active version (or `ID@VERSION`, or a pack folder), verified.
2. Cases: the labelled cases of the dataset (`mafm3 dataset add-case` writes them), each with its content
   hash (`Case.content_sha256`).
3. Held-out cases (deterministic: sorted ids, a seeded stratified split, `splits.kfold_split`): with
   k = round(1 / holdout) parts, part 0 is held out when it holds at least `MIN_HELD_OUT` cases ("holdout");
   with fewer cases every part is held out in turn ("folds": k fine-tunings, each on the other parts, so every
   case is scored once by a version that never trained on it), and the new pack is then fine-tuned on all
   cases, so the comparison is the cross-validated estimate of what that procedure gives.
4. Fine-tuning: `mafm3 train --init` (`training.pipeline.train`): the skill's own weights, its preset's
   trainable parts only (the backbone and every other skill stay byte-identical), its own recipe from its
   provenance (learning rate and schedule, weight decay, crops per case, crop centres), no inner validation
   (the last iteration is kept), `iterations` iterations. Under torchrun every rank trains; rank 0 goes on.
5. Evaluation through the engine (`training.evaluation.segmentation_rows`, the code path of `mafm3 eval` and
   `mafm3 run`): the current and the new version on the held-out cases; Dice and HD95 per class and case,
   their means with bootstrap intervals, and the paired difference new - current per class.
6. Gate (`gate`): the new version is *not worse* when its mean Dice over classes is at least the current
   one's minus `DICE_TOLERANCE`, and no class drops beyond its noise: a class fails when its mean Dice falls
   by more than `DICE_TOLERANCE` and the 95 % bootstrap interval of the paired difference, over at least
   `MIN_PAIRED_CASES` cases where both versions define it, lies below 0.
7. `out`: the new pack (manifest + weights, version: the next minor number above every version of the id
   here, e.g. 1.0.0 -> 1.1.0; provenance in `training.improve`: base version and weights hash, the cases
   with their content hashes, the held-out ids, iterations, the gate and the held-out metrics of both
   versions) with `comparison.json` and the per-case CSVs beside them. With `install`, a version that passes
   the gate is installed beside the current one and made active (`skills.store`); otherwise nothing in
   MAFM3_HOME's skills changes, and `message` says why in one sentence. `out` is written before installing.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mafm3.errors import MAFM3Error
from mafm3.files import atomic_write_text
from mafm3.progress import ProgressCallback, silent_progress
from mafm3.skills.manifest import MANIFEST_FILE, SkillManifest
from mafm3.training.datasets import Case, load_cohort
from mafm3.training.metrics import HECKTOR_CLASSES, bootstrap_ci, segmentation_summary, write_metrics
from mafm3.training.splits import Fold, Splits, kfold_split

DEFAULT_ITERATIONS = 100
DEFAULT_HOLDOUT = 0.25
MIN_HELD_OUT = 3  # fewer held-out cases than this in one part: every part is held out in turn (folds)
DICE_TOLERANCE = 0.01  # how much lower a mean Dice may be and still count as not worse
# A bootstrap over one or two paired cases is no interval (over one it is the point itself): a class defined
# on fewer held-out cases than this is judged by the mean over classes only.
MIN_PAIRED_CASES = 3
COMPARISON_FILE = "comparison.json"
VERSIONS = ("current", "new")


@dataclass
class ImproveOptions:
    """What `mafm3 improve` (and the worker's `improve` op) takes."""

    skill: str  # ID (its active version), ID@VERSION, or a pack folder
    dataset: Path
    out: Path  # the new pack folder; must not exist
    iterations: int | None = None  # default DEFAULT_ITERATIONS
    holdout: float = DEFAULT_HOLDOUT
    install: bool = False
    device: str = "auto"
    precision: str = "auto"
    seed: int = 42
    cache: Path | None = None
    bootstrap: int = 1000

    def __post_init__(self) -> None:
        self.dataset, self.out = Path(self.dataset), Path(self.out)
        self.holdout = DEFAULT_HOLDOUT if self.holdout is None else float(self.holdout)  # (JSON null)
        self.install = bool(self.install)
        if not 0 < self.holdout < 1:
            raise MAFM3Error(
                f"--holdout is the share of cases held out, between 0 and 1; got {self.holdout}."
            )
        if self.iterations is not None and int(self.iterations) < 1:
            raise MAFM3Error(f"--iterations must be at least 1, got {self.iterations}.")


@dataclass
class ImproveResult:
    """What an improve did: the comparison (comparison.json), the new pack, whether it was installed."""

    comparison: dict
    pack: Path
    installed: bool
    message: str

    def record(self) -> dict:
        """The worker's `result` record."""
        return {
            "comparison": self.comparison,
            "pack": str(self.pack),
            "installed": self.installed,
            "message": self.message,
        }


def improve(
    options: ImproveOptions,
    progress: ProgressCallback = silent_progress,
    cancel: threading.Event | None = None,
) -> ImproveResult | None:
    """Fine-tune, compare, gate and (with `install`) install, as the module docstring says. Returns None on
    the ranks other than 0 under torchrun. `cancel` is checked between iterations and cases (raising
    `mafm3.engine.Cancelled`); a cancelled or failed improve leaves `out` and the installed skills as they
    were."""
    from mafm3.skills.packs import resolve_pack, verify_pack

    progress = _cancellable(progress, cancel)
    out = options.out.resolve()
    if out.exists():
        raise MAFM3Error(f"{out} already exists and packs are never overwritten; choose a new --out.")
    base_folder = resolve_pack(options.skill)
    if not base_folder.is_dir():
        raise MAFM3Error(f"{base_folder} is a zip; install it or unpack it, then improve the folder.")
    base = verify_pack(base_folder)
    if base.task != "segmentation":
        raise MAFM3Error(
            f"Skill {base.id} does {base.task}; `mafm3 improve` learns from corrected masks, so it improves "
            "segmentation skills only."
        )
    cohort = load_cohort(options.dataset)
    cases = list(cohort.labelled().cases)
    if len(cases) < 2:
        raise MAFM3Error(
            f"The dataset {options.dataset} has {len(cases)} case(s) with a label; save at least 2 corrected "
            "cases (one to train on, one to hold out) first."
        )
    splits, scheme = held_out_splits(cases, options.holdout, options.seed)
    held_out = sorted(case_id for fold in splits for case_id in fold.test_ids)
    version = new_version(base)
    # One name for every rank of a torchrun job (its run id), another for each run.
    staging = out.with_name(f".{out.name}.improving-{os.environ.get('TORCHELASTIC_RUN_ID', os.getpid())}")
    main = _rank() == 0
    try:
        packs = _fine_tune(options, base_folder, base, splits, scheme, version, staging, progress)
        if not main:
            return None
        comparison = _compare(options, base_folder, packs, splits, scheme, staging, progress)
        comparison |= {
            "skill": base.id,
            "versions": {"current": _version_record(base), "new": {"id": base.id, "version": version}},
            "dataset": str(Path(cohort.source).resolve()),
            "scheme": scheme,
            "held_out_case_ids": held_out,
            "iterations": options.iterations or DEFAULT_ITERATIONS,
        }
        final = packs["final"]
        _record_provenance(final, base, cases, comparison, options)
        comparison["versions"]["new"]["weights_sha256"] = SkillManifest.read(final).weights["sha256"]
        installed, message = _verdict(options, base, version, comparison)
        comparison |= {"installed": installed, "message": message}
        _write_out(out, final, staging, comparison)
        if installed:
            _install(out, base, version, comparison)
    except BaseException:
        if main:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return ImproveResult(comparison, out, installed, message)


def held_out_splits(cases: list[Case], holdout: float, seed: int) -> tuple[Splits, str]:
    """The folds whose test cases are held out (see the module docstring): one fold ("holdout") or all k
    ("folds"); no fold has validation cases (the last iteration is kept; nothing selects on held-out ones)."""
    k = min(len(cases), max(2, round(1 / holdout)))
    parts = kfold_split(cases, k=k, seed=seed, val_fraction=0)
    if len(parts[0].test_ids) >= MIN_HELD_OUT:
        return Splits("improve-holdout", seed, {"holdout": holdout, "k": k}, (parts[0],)), "holdout"
    return Splits("improve-folds", seed, {"holdout": holdout, "k": k}, parts.folds), "folds"


def new_version(base: SkillManifest) -> str:
    """The next minor version above every installed or shipped version of the skill (1.0.0 -> 1.1.0; with
    1.1.0 already there, 1.2.0), so versions never collide."""
    from mafm3.skills.registry import version_key
    from mafm3.skills.store import installed_and_shipped_manifests
    from mafm3.training.source import next_version

    versions = [base.version] + [
        str(manifest["version"])
        for manifest in installed_and_shipped_manifests()
        if manifest.get("id") == base.id and "version" in manifest
    ]
    return next_version(max(versions, key=version_key))


def fine_tuning_recipe(base: SkillManifest) -> dict:
    """`TrainOptions` fields of the skill's own recipe, from its provenance (`training.hyperparameters`);
    what it does not record keeps the training defaults."""
    recorded = (base.training or {}).get("hyperparameters") or {}
    recipe: dict = {"recipe": base.training["recipe"]} if (base.training or {}).get("recipe") else {}
    if recorded.get("lr"):
        recipe["lr"] = float(recorded["lr"])
    if recorded.get("weight_decay") is not None:
        recipe["weight_decay"] = float(recorded["weight_decay"])
    if recorded.get("lr_poly"):
        recipe["poly_lr"] = True
    if recorded.get("crops_per_case"):
        recipe["crops_per_case"] = int(recorded["crops_per_case"])
    if recorded.get("batch_size_per_rank"):
        recipe["batch_size"] = int(recorded["batch_size_per_rank"])
    ratios = recorded.get("class_ratios") or _ratios_of(recorded.get("crop_centres"))
    if ratios:
        recipe["class_ratios"] = tuple(float(ratio) for ratio in ratios)
    return recipe


def _ratios_of(crop_centres: str | None) -> list[float] | None:
    """The odds in a recorded `crop_centres` text such as "background, GTVp or GTVn voxel, 1:1:1" (packs
    trained before `class_ratios` was recorded as numbers); None for the tumour-or-background recipe."""
    match = re.search(r"GTVn voxel, ([\d.]+):([\d.]+):([\d.]+)$", crop_centres or "")
    return [float(value) for value in match.groups()] if match else None


def _fine_tune(
    options: ImproveOptions,
    base_folder: Path,
    base: SkillManifest,
    splits: Splits,
    scheme: str,
    version: str,
    staging: Path,
    progress: ProgressCallback,
) -> dict[str, Path]:
    """Fine-tune one pack per held-out fold (and, for folds, one on every case): {fold index or "final":
    pack folder}."""
    from mafm3.training.pipeline import TrainOptions, train
    from mafm3.training.trainer import Ranks

    every_case = Fold(
        0, tuple(sorted({i for fold in splits for i in fold.train_ids + fold.test_ids})), (), ()
    )
    runs = [(fold.index, Splits(splits.method, splits.seed, splits.parameters, (fold,))) for fold in splits]
    if scheme == "folds":
        runs.append(("final", Splits("improve-all", splits.seed, splits.parameters, (every_case,))))
    recipe = fine_tuning_recipe(base)
    packs = {}
    staging.mkdir(parents=True, exist_ok=True)
    ranks = Ranks.start(options.device)  # one process group for every fine-tuning of a torchrun job
    try:
        for number, (key, split) in enumerate(runs):
            split_file = staging / f"split-{key}.json"
            atomic_write_text(
                split_file, json.dumps(split.to_dict(), indent=2) + "\n"
            )  # every rank: same text

            def reporting(stage: str, fraction: float, message: str = "", number=number) -> None:
                if stage == "train" and len(runs) > 1:
                    fraction = (number + fraction) / len(runs)
                    message = f"fine-tuning {number + 1} of {len(runs)}: {message}"
                progress(stage, fraction, message)

            train_options = TrainOptions(
                task="segmentation",
                dataset=options.dataset,
                out=staging / f"pack-{key}",
                init=str(base_folder),
                version=version,
                folds_file=split_file,
                fold=0,
                iterations=options.iterations or DEFAULT_ITERATIONS,
                seed=options.seed,
                device=options.device,
                precision=options.precision,
                cache=options.cache,
                **recipe,
            )
            train(train_options, reporting, ranks)
            packs[key] = train_options.out
    finally:
        ranks.close()
    packs["final"] = packs.get("final", packs[0])
    return packs


def _compare(
    options: ImproveOptions,
    base_folder: Path,
    packs: dict[str, Path],
    splits: Splits,
    scheme: str,
    staging: Path,
    progress: ProgressCallback,
) -> dict:
    """Both versions on the held-out cases through the engine: per case, per class, means with bootstrap
    intervals, the paired difference, and the gate."""
    from mafm3.training.evaluation import segmentation_rows

    cohort = load_cohort(options.dataset)
    held_out = sorted(case_id for fold in splits for case_id in fold.test_ids)
    scoring = [("current", base_folder, held_out)]
    scoring += [("new", packs[fold.index], list(fold.test_ids)) for fold in splits]
    rows: dict[str, list[dict]] = {"current": [], "new": []}
    for number, (name, pack, case_ids) in enumerate(scoring):

        def reporting(stage: str, fraction: float, message: str = "", number=number, name=name) -> None:
            progress(stage, (number + fraction) / len(scoring), f"{name} version: {message}")

        rows[name] += segmentation_rows(
            pack,
            cohort.select(case_ids),
            device=options.device,
            precision=options.precision,
            progress=reporting,
        )
    order = {case_id: index for index, case_id in enumerate(held_out)}
    rows["new"].sort(key=lambda row: order[row["case_id"]])
    ci = {"n_resamples": options.bootstrap, "seed": options.seed}
    metrics = {name: segmentation_summary(rows[name], **ci) for name in VERSIONS}
    difference = {
        name: paired_difference(rows["current"], rows["new"], name, **ci) for name in HECKTOR_CLASSES
    }
    for name in VERSIONS:
        write_metrics(staging / f"comparison_{name}.json", metrics[name], rows[name])
    return {
        "metrics": metrics,
        "per_case": rows,
        "difference": difference,
        "gate": gate(metrics, difference),
    }


def paired_difference(
    current: list[dict], new: list[dict], name: str, *, n_resamples: int = 1000, seed: int = 0
) -> dict:
    """new - current Dice of class `name` over the cases where both are defined: the mean and its percentile
    bootstrap interval over cases (pairs resampled together)."""
    before = np.array([row[f"{name}_dice"] for row in current], dtype=float)
    after = np.array([row[f"{name}_dice"] for row in new], dtype=float)
    differences = (after - before)[np.isfinite(before) & np.isfinite(after)]
    if not differences.size:
        return {"dice_mean": math.nan, "dice_mean_ci": None, "n_cases": 0}

    def mean(index: np.ndarray) -> float:
        return float(differences[index].mean())

    interval = bootstrap_ci(mean, differences.size, n_resamples=n_resamples, seed=seed)
    return {
        "dice_mean": float(differences.mean()),
        "dice_mean_ci": interval,
        "n_cases": int(differences.size),
    }


def gate(metrics: dict, difference: dict, tolerance: float = DICE_TOLERANCE) -> dict:
    """Whether the new version is not worse than the current one on the held-out cases (module docstring)."""
    current = metrics["current"]["dice_mean_over_classes"]
    new = metrics["new"]["dice_mean_over_classes"]
    reasons = []
    if not (np.isfinite(new) and new >= (current if np.isfinite(current) else -math.inf) - tolerance):
        reasons.append(f"mean Dice over classes fell from {current:.3f} to {new:.3f}")
    for name, change in difference.items():
        interval = change["dice_mean_ci"]
        judged = interval and change.get("n_cases", MIN_PAIRED_CASES) >= MIN_PAIRED_CASES
        if judged and change["dice_mean"] < -tolerance and interval["high"] < 0:
            reasons.append(
                f"{name} Dice fell by {-change['dice_mean']:.3f} (95 % interval of the change "
                f"{interval['low']:+.3f} to {interval['high']:+.3f})"
            )
    return {
        "rule": (
            f"not worse: mean Dice over classes >= current - {tolerance}, and no class whose mean Dice falls "
            f"by more than {tolerance} with the 95 % bootstrap interval of the paired change (over at least "
            f"{MIN_PAIRED_CASES} cases) below 0"
        ),
        "tolerance": tolerance,
        "passed": not reasons,
        "reasons": reasons,
    }


def _version_record(manifest: SkillManifest) -> dict:
    return {"id": manifest.id, "version": manifest.version, "weights_sha256": manifest.weights["sha256"]}


def _record_provenance(
    pack: Path, base: SkillManifest, cases: list[Case], comparison: dict, options: ImproveOptions
) -> None:
    """Add `training.improve` and the held-out metrics to the new pack's manifest (its weights unchanged)."""
    manifest = SkillManifest.read(pack)
    manifest.training["improve"] = {
        "base": _version_record(base),
        "cases": [{"case_id": case.case_id, "sha256": case.content_sha256()} for case in cases],
        "held_out_case_ids": comparison["held_out_case_ids"],
        "scheme": comparison["scheme"],
        "iterations": comparison["iterations"],
        "holdout": options.holdout,
        "gate": comparison["gate"],
    }
    manifest.metrics["held_out"] = {
        name: {
            key: value for key, value in comparison["metrics"][name].items() if key in ("n_cases", "classes")
        }
        | {"dice_mean_over_classes": comparison["metrics"][name]["dice_mean_over_classes"]}
        for name in VERSIONS
    }
    values = json.loads(json.dumps(manifest.to_dict()), parse_constant=lambda _: None)
    atomic_write_text(pack / MANIFEST_FILE, json.dumps(values, indent=2) + "\n")


def _verdict(
    options: ImproveOptions, base: SkillManifest, version: str, comparison: dict
) -> tuple[bool, str]:
    """Whether to install the new version (the gate passed and `install` was asked for) and the sentence
    that says what happens."""
    current, new = (comparison["metrics"][name]["dice_mean_over_classes"] for name in VERSIONS)
    scores = f"held-out mean Dice {current:.3f} -> {new:.3f} on {len(comparison['held_out_case_ids'])} cases"
    if not comparison["gate"]["passed"]:
        why = "; ".join(comparison["gate"]["reasons"])
        return False, f"{base.id} {version} is worse than {base.version} ({why}), so {base.version} stays."
    if not options.install:
        return False, (
            f"{base.id} {version} is not worse than {base.version} ({scores}); install it with "
            f"`mafm3 skill install {options.out}` and `mafm3 skill use {base.id}@{version}`."
        )
    return True, (
        f"{base.id} {version} is installed and active ({scores}); go back with "
        f"`mafm3 skill use {base.id}@{base.version}`."
    )


def _install(out: Path, base: SkillManifest, version: str, comparison: dict) -> None:
    """Install the written pack and make it active; if that fails, comparison.json says so before the error
    goes on (the pack stays in `out`)."""
    from mafm3.skills.packs import install_pack
    from mafm3.skills.store import use_version

    try:
        install_pack(out)
        use_version(base.id, version)
    except MAFM3Error as error:
        comparison |= {"installed": False, "message": f"{base.id} {version} was not installed: {error}"}
        atomic_write_text(out / COMPARISON_FILE, _comparison_text(comparison))
        raise


def _write_out(out: Path, pack: Path, staging: Path, comparison: dict) -> None:
    """`out`: the new pack's two files, comparison.json and the two versions' per-case CSVs, all at once."""
    from mafm3.files import atomic_folder
    from mafm3.skills.packs import PACK_FILES

    with atomic_folder(out) as partial:
        for name in PACK_FILES:
            shutil.copyfile(pack / name, partial / name)
        for name in VERSIONS:
            shutil.copyfile(staging / f"comparison_{name}_per_case.csv", partial / f"{name}_per_case.csv")
        (partial / COMPARISON_FILE).write_text(_comparison_text(comparison))


def _comparison_text(comparison: dict) -> str:
    """comparison.json: strict JSON (NaN, an undefined mean, as null)."""
    values = json.loads(json.dumps(comparison, default=str), parse_constant=lambda _: None)
    return json.dumps(values, indent=2, allow_nan=False) + "\n"


def _cancellable(progress: ProgressCallback, cancel: threading.Event | None) -> ProgressCallback:
    if cancel is None:
        return progress

    def checked(stage: str, fraction: float, message: str = "") -> None:
        if cancel.is_set():
            from mafm3.engine import Cancelled

            raise Cancelled
        progress(stage, fraction, message)

    return checked


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))
