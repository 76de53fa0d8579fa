"""The benchmark's verdicts and its table: targets judged on named figures, and a text report for stdout."""

from __future__ import annotations

from mafm3.bench.sections import STAGES

CPU_TARGETS = {"end_to_end_s": 60.0, "peak_rss_gb": 6.0}  # 2-core CPU, segmentation + prognosis, one study
CUDA_TARGETS = {"end_to_end_s": 3.0, "cuda_max_allocated_gb": 8.0}  # H200
# The paper-size PET/CT skill over a whole study: preprocess + segmentation + labels back (2-core CPU; H200),
# and the fast path against the dense fp32 PyTorch sliding window in the same run.
PAPER_STUDY_TARGET_S = {"cpu": 60.0, "cuda": 1.0}
PAPER_STUDY_RATIO = 5.0
SWITCH_TARGET_MS = 50.0
PAPER = "paper PET/CT skill"


def targets(report: dict, device_type: str) -> list[dict]:
    """Each target with the figure it is judged on and whether that figure meets it (for the sections run)."""
    rows = _whole_study_targets(report["paper_whole_study"], device_type)
    if "end_to_end" in report:
        rows = _end_to_end_targets(report, device_type) + rows
        switch = report["c_skill_switch"]["switch_ms_median"]
        rows.append(_at_most("skill switch, median", switch, SWITCH_TARGET_MS, "ms"))
    rows += [
        {"target": f"ratio {key} > 1 (in our favour)", "measured": value, "limit": 1.0, "met": value > 1.0}
        for key, value in report["ratios"].items()
    ]
    return [{**row, "study_size": report["settings"]["size"]} for row in rows]


def _end_to_end_targets(report: dict, device_type: str) -> list[dict]:
    warm, cli = report["end_to_end"]["warm"], report["end_to_end"]["cli"]
    rows = []
    if device_type == "cuda":
        rows += [
            _at_most("GPU end to end, warm engine", warm["end_to_end_s"], CUDA_TARGETS["end_to_end_s"], "s"),
            _at_most(
                "GPU memory, warm run",
                warm["cuda_max_allocated_gb"],
                CUDA_TARGETS["cuda_max_allocated_gb"],
                "GB",
            ),
            _at_most(
                "GPU end to end, new `mafm3 run` process", cli["seconds"], CUDA_TARGETS["end_to_end_s"], "s"
            ),
        ]
    else:
        rows += [
            _at_most("CPU end to end, warm engine", warm["end_to_end_s"], CPU_TARGETS["end_to_end_s"], "s"),
            _at_most("CPU peak RSS, warm run", warm["peak_rss_gb"], CPU_TARGETS["peak_rss_gb"], "GB"),
            _at_most(
                "CPU end to end, new `mafm3 run` process", cli["seconds"], CPU_TARGETS["end_to_end_s"], "s"
            ),
            _at_most(
                "CPU peak RSS, new `mafm3 run` process", cli["peak_rss_gb"], CPU_TARGETS["peak_rss_gb"], "GB"
            ),
        ]
    return rows


def _whole_study_targets(whole: dict, device_type: str) -> list[dict]:
    limit = PAPER_STUDY_TARGET_S["cuda" if device_type == "cuda" else "cpu"]
    rows = [
        _at_most(f"{PAPER} over a whole study, end to end", whole["end_to_end_s"], limit, "s"),
        {
            "target": f"{PAPER}, fast path >= {PAPER_STUDY_RATIO:g}x dense fp32 PyTorch",
            "measured": whole["ratio"],
            "limit": PAPER_STUDY_RATIO,
            "met": whole["ratio"] >= PAPER_STUDY_RATIO,
        },
    ]
    if device_type != "cuda":
        rss = whole["fast"]["peak_rss_gb"]
        rows.append(_at_most(f"{PAPER} over a whole study, peak RSS", rss, CPU_TARGETS["peak_rss_gb"], "GB"))
    return rows


def _at_most(label: str, measured: float, limit: float, unit: str) -> dict:
    return {
        "target": f"{label} <= {limit:g} {unit}",
        "measured": measured,
        "limit": limit,
        "met": measured <= limit,
    }


def format_report(report: dict) -> str:
    """The report as a readable text table."""
    machine, settings, study = report["machine"], report["settings"], report["study"]
    skills = report.get("skills")
    lines = [
        f"mafm3 bench {machine['date']} on {machine['device']} ({machine['device_name']}), "
        f"torch {machine['torch']}, {machine['cpu_affinity']} CPU cores, "
        f"load {machine['load_average_1min']:g}",
        f"precision {settings['autocast']}; fastest of {settings['repeats']} run(s)"
        + (
            f"; skills {skills['segmentation']} + {skills['prognosis']} ({skills['source']})"
            if skills
            else ""
        ),
        f"study {study['size']} (seed {study['seed']}): CT {_voxels(study['ct_voxels'])}, PET "
        f"{_voxels(study['pet_voxels'])}, {study['ct_file_mb'] + study['pet_file_mb']:.0f} MB of NIfTI",
        *([f"note: {skills['note']}"] if skills and "note" in skills else []),
    ]
    if "end_to_end" in report:
        lines += _sections_lines(report)
    lines += ["", *_whole_study_lines(report["paper_whole_study"])]
    lines += ["", "Targets"]
    lines += [
        f"  {'met' if row['met'] else 'NOT MET':<8}{row['target']:<58}measured {row['measured']:g}"
        for row in report["targets"]
    ]
    return "\n".join(lines)


def _sections_lines(report: dict) -> list[str]:
    lines = [
        "",
        "End to end, segmentation + prognosis: seconds per stage, memory peak during the run",
        f"  {'run':<28}{'total':>7}"
        + "".join(f"{stage[:8]:>9}" for stage in STAGES)
        + f"{'RSS GB':>8}{'GPU GB':>8}",
    ]
    end = report["end_to_end"]
    blank = " " * 9 * len(STAGES)
    cli = end["cli"]
    lines.append(f"  {'new `mafm3 run` process':<28}{cli['seconds']:>7.2f}{blank}{cli['peak_rss_gb']:>8.2f}")
    lines.append(_run_line("first run in this process", end["first_in_process"]))
    lines.append(_run_line("warm engine", end["warm"]))
    for size, run in report["e_scaling"].items():
        lines.append(_run_line(f"(e) {size} {_voxels(run['study']['ct_voxels'])}", run))

    a, b = report["a_segmentation_vs_unetr"], report["b_ctvit_vs_reference"]
    c, d = report["c_skill_switch"], report["d_combined_vs_separate"]
    hot = report["hot_path"]
    lora = hot["lora_merged_vs_unmerged"]
    rows = [
        _side(
            f"(a) {a['shipped']['skill']} vs UNETR, {_voxels(a['shipped']['window'])} windows", a["shipped"]
        ),
        _side(f"(a) {PAPER} vs UNETR, {a['paper']['scope']}", a["paper"]),
        _side(f"(b) CT-ViT fused ({b['precision']}) vs reference, {b['scope']}", b, "fused", "reference"),
        (
            "(c) skill switch vs loading backbone + skill",
            c["switch_ms_median"] / 1000,
            c["cold_load_s"],
            c["ratio"],
        ),
        (
            "(d) both skills in one run vs one run each",
            d["combined"]["end_to_end_s"],
            d["separate_s"],
            d["ratio"],
        ),
        _side("hot path: LoRA merged vs unmerged", lora, "merged", "unmerged"),
    ]
    rows += [
        _side(
            f"hot path: resampling ({name} grid), torch on {value['torch_device']} vs SimpleITK",
            value,
            "torch",
            "simpleitk_cpu",
        )
        for name, value in hot["resampling"].items()
    ]
    lines += [
        "",
        f"Side by side (seconds; ratio = baseline / ours){'':<26}{'ours':>9}{'baseline':>10}{'ratio':>8}",
    ]
    lines += [
        f"  {label:<72}{ours:>9.3f}{baseline:>10.3f}{value:>8.2f}" for label, ours, baseline, value in rows
    ]
    return lines


def _whole_study_lines(whole: dict) -> list[str]:
    lines = [
        f"{PAPER} over a whole study ({_voxels(whole['input_chw'][1:])} voxels, "
        f"{_voxels(whole['window'])} windows): {whole['windows_decoded']} of {whole['windows_total']} "
        f"windows decoded, decoder {whole['decoder']['runtime']}, {whole['precision_fast']}",
        f"  fast path {whole['fast_s']:.1f} s against dense fp32 PyTorch {whole['baseline_s']:.1f} s: "
        f"{whole['ratio']:.2f}x; end to end {whole['end_to_end_s']:.1f} s, peak RSS "
        f"{whole['fast']['peak_rss_gb']:.2f} GB",
        f"  baseline: {whole['baseline_scope']}",
        f"  labels: {whole['labels_differing_voxels']} voxels differ"
        + (f" ({whole['labels_compared_on']})" if "labels_compared_on" in whole else ""),
    ]
    levers = whole.get("levers")
    if levers:
        lines.append(
            "  levers, each alone (ratio = dense fp32 PyTorch / with the lever; used by the fast path?)"
        )
        names = (
            "skip_empty_windows",
            "body_fitted_box",
            "openvino",
            "bf16",
            "openvino_bf16",
            "channels_last_3d",
        )
        for name in names:
            if name in levers:
                lever = levers[name]
                lines.append(f"    {name:<22}{lever['ratio']:>7.2f}x  used: {lever['used']}")
        if "threads" in levers:
            lines.append(f"    {'all threads vs 1':<22}{levers['threads']['ratio_all_vs_1']:>7.2f}x")
        per_batch = ", ".join(f"{k}: {v:.2f}" for k, v in levers["batch_size"]["seconds_per_window"].items())
        lines.append(f"    seconds per window by batch size: {per_batch}")
    return lines


def _side(label: str, record: dict, ours: str = "ours", baseline: str = "unetr") -> tuple:
    return label, record[ours]["seconds"], record[baseline]["seconds"], record["ratio"]


def _run_line(label: str, run: dict) -> str:
    stages = "".join(f"{run['stages_s'][stage]:>9.2f}" for stage in STAGES)
    gpu = f"{run['cuda_max_allocated_gb']:>8.2f}" if "cuda_max_allocated_gb" in run else ""
    return f"  {label:<28}{run['end_to_end_s']:>7.2f}{stages}{run['peak_rss_gb']:>8.2f}{gpu}"


def _voxels(sizes: list[int]) -> str:
    return "x".join(str(size) for size in sizes)
