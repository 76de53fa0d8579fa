"""The engine: one study in, a `StudyResult` out, with backbones and skills kept warm between studies.

Flow: read the study -> choose the skills (registry) -> for each distinct preprocessing, prepare
the input once -> activate each skill on its shared backbone (no reload) -> infer -> labels back onto the CT's
own grid, prognosis and classification read out -> `StudyResult`; `run_and_write` adds the writers.
"""

from __future__ import annotations

import resource
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from mafm3 import __version__
from mafm3.clinical import ClinicalRecord
from mafm3.engine.backbones import BackboneCache, LoadedBackbone, find_backbone
from mafm3.engine.cpu_runtime import RaceDecoder
from mafm3.engine.device import autocast_dtype, resolve_device
from mafm3.engine.inference import SW_BATCH_SIZE, Cancelled, StageClock, classify, prognose, segment
from mafm3.engine.quality import qc_flags
from mafm3.errors import MAFM3Error
from mafm3.imaging.measurements import measure_lesions
from mafm3.imaging.postprocess import remove_false_positives
from mafm3.imaging.preprocess import (
    PreparedInput,
    PreprocessingConfig,
    labels_to_ct_grid,
    model_array_to_ct_grid,
    prepare_input,
)
from mafm3.imaging.study import Study, load_study
from mafm3.progress import ProgressCallback, silent_progress
from mafm3.results import ClassificationResult, PrognosisResult, SegmentationResult, StudyResult
from mafm3.skills.manifest import PostprocessingConfig
from mafm3.skills.packs import LoadedSkill, load_skill
from mafm3.skills.registry import AvailableSkill, choose_skill, installed_and_shipped_skills
from mafm3.skills.store import split_reference
from mafm3.skills.text_side import load_clip_text, load_text_encoder
from mafm3.tasks import TASKS


@dataclass
class RunRequest:
    """What to run on one study. Paths are files or DICOM folders; `clinical` is a JSON file; `report` a text
    file with the patient's report, put in the clinical record (for skills trained on supplied reports).

    skills: explicit skill ids (each runs its own task); empty -> one skill per task in `tasks`, chosen from
    the images at hand (the PET/CT skill when a PET is given, else the CT skill).
    overlap: sliding-window overlap in [0, 1); None takes the skill's own.
    sw_batch_size: windows per forward pass, at least 1.
    ct_series_uid / pet_series_uid: which DICOM series to read when a folder holds several.
    dense: decode every window of the whole ROI box (the baseline); by default only windows holding body or
    PET uptake are decoded, over the box fitted to them (`inference.sliding_window_labels`).
    """

    ct: str
    pet: str | None = None
    clinical: str | None = None
    report: str | None = None
    skills: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=lambda: ["segmentation"])
    overlap: float | None = None
    sw_batch_size: int = SW_BATCH_SIZE
    dense: bool = False
    pet_units: str = "auto"
    pet_scale: float | None = None
    device: str | None = None
    precision: str = "auto"
    ct_series_uid: str | None = None
    pet_series_uid: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.sw_batch_size, bool) or not isinstance(self.sw_batch_size, int):
            raise MAFM3Error(
                f"The sliding-window batch size must be a whole number, got {self.sw_batch_size!r}."
            )
        if self.sw_batch_size < 1:
            raise MAFM3Error(
                f"The sliding-window batch size must be at least 1 window per pass, got {self.sw_batch_size}."
            )


class Engine:
    """Keeps backbones and skills loaded per device, so a warm process pays only for inference."""

    def __init__(self, device: str = "auto", skill_roots: list[Path] | None = None) -> None:
        self.default_device = device
        self.skill_roots = skill_roots
        self.backbones = BackboneCache()
        self._skills: dict[tuple[str, str], LoadedSkill] = {}  # (skill id, device) -> loaded skill
        self._text: dict[tuple[Path, str], object] = {}
        self._decoders: dict[tuple, RaceDecoder] = {}  # (skill id, version, channels, dtype)

    # -- skills -------------------------------------------------------------------------------------------

    def available(self) -> list[AvailableSkill]:
        """Installed packs, then those shipped with mafm3 (an installed id+version shadows a shipped one)."""
        return installed_and_shipped_skills(self.skill_roots)

    def choose(self, request: RunRequest, modalities: set[str]) -> list[AvailableSkill]:
        """The skills the request asks for, given the study's modalities; MAFM3Error when one cannot run."""
        candidates = self.available()
        if request.skills:
            chosen = []
            for skill_id in request.skills:  # an id (its active version) or ID@VERSION
                named_id = split_reference(skill_id)[0]
                tasks = {s.manifest.task for s in candidates if s.manifest.id == named_id}
                task = tasks.pop() if len(tasks) == 1 else "segmentation"
                chosen.append(choose_skill(task, modalities, candidates, skill_id))
            return chosen
        unknown = sorted(set(request.tasks) - set(TASKS))
        if unknown or not request.tasks:
            raise MAFM3Error(f"Unknown task {', '.join(unknown) or '(none)'}; use {', '.join(TASKS)}.")
        return [choose_skill(task, modalities, candidates) for task in dict.fromkeys(request.tasks)]

    def activate(self, available: AvailableSkill, device: torch.device) -> tuple[LoadedSkill, LoadedBackbone]:
        """The skill loaded on its backbone on `device`; both are reused on later calls."""
        manifest = available.manifest
        folder = find_backbone(manifest.backbone["sha256"], manifest.backbone["id"])
        backbone = self.backbones.get(folder, device)
        key = (manifest.id, str(device))
        loaded = self._skills.get(key)
        if loaded is not None and loaded.manifest.version != manifest.version:
            loaded.model.release()  # one version per id on a backbone: the adapter is named after the id
            loaded = None
        if loaded is None:
            loaded = load_skill(
                available.folder if available.folder is not None else manifest,
                backbone.encoder,
                backbone.sha256,
                **self._text_side(manifest, backbone),
            )
            loaded.model.to(device)
            self._skills[key] = loaded
        loaded.model.activate(merged=True)  # LoRA folded into new weight tensors; the base stays untouched
        return loaded, backbone

    def _text_side(self, manifest, backbone: LoadedBackbone) -> dict:
        config = manifest.config
        needs_report = (
            config.get("task") == "prognosis"
            and (config.get("prognosis") or {}).get("clinical_encoder") == "report"
        )
        if config.get("task") == "classification":
            return {"clip_text": self._cached_text(backbone, load_clip_text)}
        if needs_report:
            return {"text_encoder": self._cached_text(backbone, load_text_encoder)}
        return {}

    def _cached_text(self, backbone: LoadedBackbone, loader):
        key = (backbone.folder.resolve(), loader.__name__)
        if key not in self._text:
            self._text[key] = loader(backbone.folder)
            if hasattr(self._text[key], "to"):
                self._text[key].to(backbone.device)
        return self._text[key]

    # -- running ------------------------------------------------------------------------------------------

    def load(self, request: RunRequest, progress: ProgressCallback = silent_progress) -> Study:
        study = load_study(
            request.ct,
            request.pet,
            request.clinical,
            pet_units=request.pet_units,
            pet_scale=request.pet_scale,
            ct_series_uid=request.ct_series_uid,
            pet_series_uid=request.pet_series_uid,
            progress=progress,
        )
        if request.report is not None:
            study.clinical = (study.clinical or ClinicalRecord()).with_report(request.report)
            study.sources["report"] = str(request.report)
        return study

    def run(
        self,
        request: RunRequest,
        progress: ProgressCallback = silent_progress,
        cancel: threading.Event | None = None,
        study: Study | None = None,
    ) -> tuple[StudyResult, Study]:
        """Run the requested skills on one study. Returns the result and the study it was computed on."""
        started = time.perf_counter()
        device = resolve_device(request.device or self.default_device)
        dtype = autocast_dtype(device, request.precision)
        clock = StageClock(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        def checkpoint() -> None:
            if cancel is not None and cancel.is_set():
                raise Cancelled

        if study is None:
            study = clock.timed("read", self.load, request, progress)
        modalities = {"CT"} | ({"PET"} if study.pet is not None else set())
        chosen = self.choose(request, modalities)
        result = StudyResult(
            inputs=_inputs_record(request, study), device=_device_name(device), warnings=list(study.warnings)
        )
        prepared_by_config: dict[PreprocessingConfig, PreparedInput] = {}
        for number, available in enumerate(chosen):
            checkpoint()
            manifest = available.manifest
            progress("load", number / len(chosen), f"activating {manifest.id}")
            loaded, backbone = clock.timed("load", self.activate, available, device)
            backbone.encoder.autocast_dtype = dtype
            config = PreprocessingConfig.from_dict(manifest.preprocessing)
            if config not in prepared_by_config:  # skills with the same preprocessing share one pass
                prepared_by_config[config] = clock.timed(
                    "preprocess", prepare_input, study, config, skill_name=manifest.id, progress=progress
                )
            prepared = prepared_by_config[config]
            checkpoint()
            self._run_skill(loaded, prepared, study, request, result, device, dtype, clock, progress, cancel)
            result.backbone = {"id": backbone.manifest["id"], "sha256": backbone.sha256}
            result.demo = result.demo or manifest.demo
        result.timings_s = {stage: round(seconds, 4) for stage, seconds in clock.seconds.items()}
        result.timings_s["total"] = round(time.perf_counter() - started, 4)
        result.peak_rss_gb = peak_rss_gb()
        if device.type == "cuda":
            peak_allocated = torch.cuda.max_memory_allocated(device) / 1024**3
            result.inputs["cuda_max_allocated_gb"] = round(peak_allocated, 3)
        return result, study

    def _run_skill(self, loaded, prepared, study, request, result, device, dtype, clock, progress, cancel):
        manifest = loaded.manifest
        model = loaded.model
        if manifest.task == "segmentation":
            window = tuple(manifest.inference["window_voxels"])
            overlap = manifest.inference.get("overlap", 0.25) if request.overlap is None else request.overlap
            channels = prepared.array.shape[0]
            decoder = self._cpu_decoder(loaded, channels, dtype) if device.type == "cpu" else None
            labels, uncertainty = segment(
                model,
                prepared,
                window,
                overlap=overlap,
                sw_batch_size=request.sw_batch_size,
                device=device,
                dtype=dtype,
                clock=clock,
                progress=progress,
                cancel=cancel,
                mirror=bool(manifest.inference.get("mirror_tta", False)),
                blend=manifest.inference.get("blend", "gaussian"),
                skip_empty=not request.dense,
                fit_box=not request.dense,
                decoder=decoder,
            )
            if decoder is not None:
                result.inputs["decoder"] = decoder.record()
            result.segmentation = clock.timed(
                "postprocess", segmentation_on_ct, labels, uncertainty, prepared, study, manifest
            )
            return
        _check_input_size(manifest, prepared)
        if manifest.task == "prognosis":
            outcome = prognose(model, prepared, study.clinical, device=device, dtype=dtype, clock=clock)
            result.prognosis = PrognosisResult(
                risk=float(outcome["risk"][0]),
                risk_group=outcome["risk_group"][0],
                times_days=[float(t) for t in outcome["times_days"]],
                survival=[float(s) for s in outcome["survival"][0]],
                survival_at_years={y: float(p[0]) for y, p in outcome["survival_at_years"].items()},
                skill_id=manifest.id,
                skill_version=manifest.version,
                skill_weights_sha256=manifest.weights["sha256"],
            )
        else:
            probabilities = classify(model, prepared, device=device, dtype=dtype, clock=clock)
            result.classification = ClassificationResult(
                probabilities, manifest.id, manifest.version, manifest.weights["sha256"]
            )
        progress("inference", 1.0, f"{manifest.id} done")

    def _cpu_decoder(self, loaded: LoadedSkill, channels: int, dtype: torch.dtype | None) -> RaceDecoder:
        """The skill's decoder on the CPU: PyTorch or OpenVINO, whichever `RaceDecoder` finds faster."""
        key = (loaded.manifest.id, loaded.manifest.version, channels, dtype)
        if key not in self._decoders:
            model = loaded.model
            self._decoders[key] = RaceDecoder(model.decoder, channels, model.backbone.config.dim, dtype)
        return self._decoders[key]

    def run_and_write(
        self,
        request: RunRequest,
        out_dir: str | Path,
        *,
        overwrite: bool = False,
        dicom_seg: bool = False,
        rtstruct: bool = False,
        sr: bool = False,
        progress: ProgressCallback = silent_progress,
        cancel: threading.Event | None = None,
    ) -> tuple[StudyResult, list[Path]]:
        """`run`, then every writer into `out_dir` (atomically: a failure leaves `out_dir` as it was)."""
        from mafm3.outputs import check_output_dir, write_outputs

        check_output_dir(out_dir, overwrite=overwrite)
        read_started = time.perf_counter()
        study = self.load(request, progress)
        read_s = time.perf_counter() - read_started
        requested = (("--dicom-seg", dicom_seg), ("--rtstruct", rtstruct), ("--sr", sr))
        dicom_outputs = [flag for flag, wanted in requested if wanted]
        if dicom_outputs and study.sources.get("ct", {}).get("geometry", {}).get("regularised"):
            # refused before any inference: the user should not wait for a result that cannot be written
            raise MAFM3Error(
                "A DICOM SEG, RTSTRUCT or SR must lie on the CT's own slices, but this CT series was "
                f"resampled onto a regular grid (see the warnings); drop {' and '.join(dicom_outputs)} and "
                "use the .seg.nrrd or labels file."
            )
        result, study = self.run(request, progress, cancel, study=study)
        result.timings_s["read"] = round(read_s, 4)
        result.timings_s["total"] = round(result.timings_s["total"] + read_s, 4)
        if cancel is not None and cancel.is_set():
            raise Cancelled
        progress("write", 0.0, f"writing {out_dir}")
        started = time.perf_counter()
        ct_files = study.sources.get("ct", {}).get("files") if dicom_seg or rtstruct or sr else None
        files = write_outputs(
            result,
            out_dir,
            study.ct,
            study.pet,
            ct_files,
            dicom_seg=dicom_seg,
            rtstruct=rtstruct,
            sr=sr,
            overwrite=overwrite,
        )
        result.timings_s["write"] = round(time.perf_counter() - started, 4)
        progress("write", 1.0, "done")
        return result, files


def uncertainty_percent(uncertainty: sitk.Image) -> sitk.Image:
    """A 0..1 uncertainty map as uint8 percent (rounded): 1 byte a voxel, and a file that compresses (float
    entropy noise does not: 9 MB against a few hundred kB for the demo study)."""
    return sitk.Cast(uncertainty * 100.0 + 0.5, sitk.sitkUInt8)


def segmentation_on_ct(
    labels: np.ndarray, uncertainty: np.ndarray, prepared: PreparedInput, study: Study, manifest
) -> SegmentationResult:
    """Model-space labels and uncertainty (T, H, W) -> the CT's grid; the skill's postprocessing, the lesion
    measurements (with the PET's SUV when there is one) and the QC flags."""
    labels_ct = labels_to_ct_grid(labels, prepared, study.ct)
    uncertainty_ct = uncertainty_percent(model_array_to_ct_grid(uncertainty, prepared, study.ct, "linear"))
    config = PostprocessingConfig.from_dict(manifest.postprocessing)
    labels_ct, removed = remove_false_positives(
        labels_ct,
        min_component_ml=config.min_component_ml,
        min_component_suv_max=config.min_component_suv_max,
        suv=study.pet,
    )
    segments = manifest.segments()
    result = SegmentationResult(
        labels_ct,
        segments,
        manifest.id,
        manifest.version,
        uncertainty=uncertainty_ct,
        measurements=measure_lesions(
            labels_ct, [spec.label for spec in segments], study.ct, study.pet, uncertainty_ct
        ),
        postprocessing=config.to_dict(),
        removed=[component.to_dict() for component in removed],
        skill_weights_sha256=manifest.weights["sha256"],
    )
    result.qc_flags = qc_flags(result, prepared.grid, study.clinical, study.checks.get("pet_ct_registration"))
    return result


def _check_input_size(manifest, prepared: PreparedInput) -> None:
    expected = tuple(manifest.inference.get("input_voxels", prepared.shape))
    if tuple(prepared.shape) != expected:
        raise MAFM3Error(
            f"Skill {manifest.id} expects a {expected} input but its preprocessing gave "
            f"{tuple(prepared.shape)}; the pack's preprocessing and inference disagree, export it again."
        )


def _inputs_record(request: RunRequest, study: Study) -> dict:
    return {
        "request": {key: value for key, value in asdict(request).items() if value not in (None, [], "")},
        "sources": study.sources,
        "ct": _image_record(study.ct),
        "pet": _image_record(study.pet) if study.pet is not None else None,
        "clinical": study.clinical.to_dict() if study.clinical is not None else None,
        "checks": study.checks,
        "mafm3": __version__,
    }


def _image_record(image) -> dict:
    return {
        "size": list(image.GetSize()),
        "spacing_mm": list(image.GetSpacing()),
        "origin_mm": list(image.GetOrigin()),
        "direction": list(image.GetDirection()),
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def peak_rss_gb() -> float:
    """The process's peak resident memory so far, in GB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024**3 if sys.platform == "darwin" else 1024**2), 3)
