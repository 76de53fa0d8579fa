#!/usr/bin/env bash
# GPU checks of mafm3: the CUDA tests (`pytest -m gpu`), the paper-size PET/CT skill over a whole study
# (`mafm3 bench --device cuda --only paper-whole-study`, target <= 1 s on an H200) and the whole
# `mafm3 bench --device cuda`, all output in $OUT.
#
#   scripts/gpu_checks.sh wheels   on a machine with the package index, from the repository root: download
#                                  into .whl/ the pinned wheels (python_core/constraints.txt) that a bare CUDA
#                                  image lacks (about 59 MB; .whl/ is added to .git/info/exclude)
#   scripts/gpu_checks.sh          on the GPU machine, from the repository root; about 5-7 minutes on an H200
#
# Python on the GPU machine: .venv/bin/python when it exists and sees a GPU (a workstation set up with
# `make setup-test TORCH=<your CUDA torch>`); otherwise python3, the image's CUDA torch, with the wheels of
# .whl/ installed into /tmp/mafm3-site and python_core/src on PYTHONPATH (nothing is fetched there).
#
# Written to $OUT (default ./gpu-checks-out): environment.txt (GPU, driver, versions), gpu-tests.log,
# paper-whole-study.txt / .json (dense fp32 against the fast path over all 147 windows), bench-cuda.txt (the
# table) and bench-cuda.json (every figure). The exit status is that of the first step that failed.
# TESTS_TIMEOUT, WHOLE_STUDY_TIMEOUT and BENCH_TIMEOUT (seconds) bound the steps; BENCH_ARGS adds arguments.
set -uo pipefail

WHEELS=(monai SimpleITK pydicom highdicom slicerio pynrrd)  # imported by mafm3 and its tests, not on the image
CONSTRAINTS=python_core/constraints.txt

pinned() {  # the `name==version` line of each wheel in the constraints
    local name
    for name in "${WHEELS[@]}"; do
        grep -i "^${name}==" "$CONSTRAINTS" || { echo "no pin for $name in $CONSTRAINTS" >&2; return 1; }
    done
}

if [[ "${1:-}" == "wheels" ]]; then
    mkdir -p .whl
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl $(pinned) || exit 1
    du -sh .whl
    exit 0
fi

OUT="${OUT:-$PWD/gpu-checks-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

if [[ -x .venv/bin/python ]] && .venv/bin/python -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    PY=.venv/bin/python
else
    PY=python3
    if ls .whl/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/mafm3-site .whl/*.whl || exit 1
    fi
    export PYTHONPATH="/tmp/mafm3-site:$PWD/python_core/src${PYTHONPATH:+:$PYTHONPATH}"
fi

{
    date -u +%Y-%m-%dT%H:%M:%SZ
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
    "$PY" - <<'EOF'
import importlib, platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
for name in ("mafm3", "monai", "SimpleITK", "peft", "transformers", "numpy", "pydicom", "highdicom", "slicerio"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except ImportError as error:
        print(name, "MISSING:", error)
EOF
} > "$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"
"$PY" -c "import torch, mafm3; assert torch.cuda.is_available(), 'torch sees no GPU'" || exit 1

mapfile -t gpu_tests < <(grep -l "mark.gpu" python_core/tests/test_*.py)  # the modules with GPU tests
timeout "${TESTS_TIMEOUT:-150}" "$PY" -m pytest -c python_core/pyproject.toml --rootdir . "${gpu_tests[@]}" \
    -m gpu -q -rs -p no:cacheprovider 2>&1 | tee "$OUT/gpu-tests.log"
status=${PIPESTATUS[0]}

timeout "${WHOLE_STUDY_TIMEOUT:-300}" "$PY" -m mafm3 bench --device cuda --only paper-whole-study \
    --json "$OUT/paper-whole-study.json" 2> "$OUT/paper-whole-study.log" | tee "$OUT/paper-whole-study.txt"
whole=${PIPESTATUS[0]}
[[ $whole -ne 0 ]] && tail -n 40 "$OUT/paper-whole-study.log"
[[ $status -eq 0 ]] && status=$whole

# shellcheck disable=SC2086  # BENCH_ARGS is a list of arguments
timeout "${BENCH_TIMEOUT:-400}" "$PY" -m mafm3 bench --device cuda --json "$OUT/bench-cuda.json" ${BENCH_ARGS:-} \
    2> "$OUT/bench-cuda.log" | tee "$OUT/bench-cuda.txt"
bench=${PIPESTATUS[0]}
[[ $bench -ne 0 ]] && tail -n 40 "$OUT/bench-cuda.log"
[[ $status -eq 0 ]] && status=$bench
exit "$status"
