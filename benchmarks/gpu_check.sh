#!/usr/bin/env bash
# The size sweep on an NVIDIA GPU: bf16 autocast, flash attention (sdpa where a model or the machine lacks it),
# torch.compile rows, MFU against the GPU's data-sheet peak and the measured matmul peak, peak CUDA memory.
# For a GPU machine without network access and with its own torch: it installs only the pure-Python wheels (and
# tokenizers / safetensors / ... binaries) from benchmarks/wheels, made here by benchmarks/download_gpu_wheels.sh,
# never a torch build. Finishes in under 8 minutes (GPU_CHECK_BUDGET_S, default 420 s, bounds the whole script;
# each timeout may add 15 s to stop a run).
#
#   bash benchmarks/gpu_check.sh                       # on the GPU machine; results in $OUT or benchmarks/gpu_results
#   GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh  # dry run of the same steps on a CPU at toy sizes
set -euo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
BUDGET_S="${GPU_CHECK_BUDGET_S:-420}"
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
PYTHON="${PYTHON:-python3}"
WHEELS="${WHEELS:-benchmarks/wheels}"
RESULTS="${OUT:-benchmarks/gpu_results}"
mkdir -p "$RESULTS"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

remaining() { echo $(( BUDGET_S - ($(date +%s) - START) )); }
section() { echo; echo "== $* ($(( $(date +%s) - START )) s)"; }

section "Python and wheels"
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), f"transformers 5.24 needs Python >= 3.11, not {sys.version}"'
if [ ! -f "$WHEELS/requirements.txt" ]; then
    echo "No $WHEELS/requirements.txt: run benchmarks/download_gpu_wheels.sh where there is network, carry $WHEELS." >&2
    exit 2
fi
if grep -qiE '^(torch|numpy|nvidia-)' "$WHEELS/requirements.txt"; then
    echo "$WHEELS/requirements.txt names torch, numpy or a CUDA library: refusing to replace the machine's build." >&2
    exit 2
fi
PIP_FLAGS=(--no-index --no-deps --find-links "$WHEELS" --disable-pip-version-check -q)
if [ "$DEVICE" = cpu ]; then
    PIP_FLAGS+=(--dry-run)  # the dry run checks that every pinned wheel is there for this Python, installs nothing
fi
"$PYTHON" -m pip install "${PIP_FLAGS[@]}" -r "$WHEELS/requirements.txt"

section "Machine"
if [ "$DEVICE" = cuda ]; then
    nvidia-smi
else
    echo "dry run on CPU: no nvidia-smi"
fi
"$PYTHON" - <<'PY'
import torch
import transformers

print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}")
if torch.cuda.is_available():
    print(f"GPU: {torch.cuda.get_device_name()}, bf16 supported: {torch.cuda.is_bf16_supported()}")
try:
    import flash_attn

    print(f"flash_attn {flash_attn.__version__}")
except ImportError:
    print("flash_attn not installed: flash_attention_2 falls back to sdpa")
PY

if [ "$DEVICE" = cuda ]; then
    SIZE_ARGS=(--points main,b32-p64-t16,b8-p256-t64,b64-p16-t16,b32-p256-t32 --repeats 3)
    # ITC first: the quickest to compile, so a stopped run still has one complete compiled comparison.
    COMPILE_ARGS=(--points main --compile --compile-points main --compile-comparisons itc,pretrain,caption --repeats 3)
else
    SIZE_ARGS=(--quick --repeats 2)
    COMPILE_ARGS=(--quick --points toy-a --compile --compile-backend eager --compile-comparisons itc --repeats 2)
fi
COMMON=(--device "$DEVICE" --dtype bf16 --attn flash_attention_2 --profile main)

# The sweep first, then the compile rows in their own run: a slow compilation cannot cost the sweep's numbers.
# Each run writes its JSON after every point, so a run stopped by the time guard keeps what it measured.
section "Size sweep (${SIZE_ARGS[*]})"
timeout --signal=INT --kill-after=15 $(( $(remaining) * 5 / 10 )) "$PYTHON" benchmarks/size_sweep.py \
    "${COMMON[@]}" "${SIZE_ARGS[@]}" --out "$RESULTS/size_sweep.md" --json "$RESULTS/size_sweep.json" \
    || echo "size sweep stopped with status $? (124: the time guard)"

section "torch.compile rows (${COMPILE_ARGS[*]})"
timeout --signal=INT --kill-after=15 $(( $(remaining) - 20 )) "$PYTHON" benchmarks/size_sweep.py \
    "${COMMON[@]}" "${COMPILE_ARGS[@]}" --profile none --out "$RESULTS/compile.md" --json "$RESULTS/compile.json" \
    || echo "compile run stopped with status $? (124: the time guard)"

section "Done: $RESULTS"
ls -l "$RESULTS"
