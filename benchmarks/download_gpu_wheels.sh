#!/usr/bin/env bash
# Downloads the wheels that benchmarks/gpu_check.sh installs on a GPU machine without network access: the pure-Python
# packages our code needs at the versions installed here (transformers, peft, accelerate, huggingface_hub and their
# dependencies) plus the binary ones (tokenizers, safetensors, hf-xet, ...) for linux x86_64 and each Python version of
# PY_VERSIONS (transformers 5.24 needs Python >= 3.11). Never torch or numpy: the GPU machine keeps its own builds.
#
#   bash benchmarks/download_gpu_wheels.sh                      # Python 3.11, 3.12 and 3.13
#   PY_VERSIONS="3.11" bash benchmarks/download_gpu_wheels.sh   # only the GPU machine's Python (fewer MiB to carry)
#
# Writes benchmarks/wheels/ (git-ignored) and benchmarks/wheels/requirements.txt, the pinned list gpu_check.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
PY_VERSIONS="${PY_VERSIONS:-3.11 3.12 3.13}"
DEST="${DEST:-benchmarks/wheels}"
mkdir -p "$DEST"

# The dependency closure of these on Linux with the oldest Python of PY_VERSIONS, pinned to the versions installed
# here (torch, numpy and CUDA libraries left out).
"$PYTHON" - "$DEST/requirements.txt" "${PY_VERSIONS%% *}" <<'PY'
import re
import sys
from importlib.metadata import PackageNotFoundError, distribution

from packaging.requirements import Requirement

target = {"python_version": sys.argv[2], "python_full_version": sys.argv[2] + ".0", "sys_platform": "linux",
          "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix", "extra": ""}

roots = ["transformers", "peft", "accelerate", "huggingface_hub", "safetensors", "tokenizers", "pillow"]
skip = {"torch", "numpy", "triton", "setuptools"}
pins: dict[str, str] = {}


def walk(name: str) -> None:
    key = re.sub(r"[-_.]+", "-", name).lower()
    if key in pins or key in skip or key.startswith("nvidia-"):
        return
    try:
        dist = distribution(name)
    except PackageNotFoundError:
        sys.exit(f"{name} is needed on the GPU machine but not installed here: pip install it, then rerun")
    pins[key] = dist.version
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate(target):  # extras, backports, other platforms drop out
            walk(req.name)


for root in roots:
    walk(root)
with open(sys.argv[1], "w") as f:
    f.writelines(f"{name}=={version}\n" for name, version in sorted(pins.items()))
print(f"{len(pins)} packages pinned in {sys.argv[1]}")
PY

for py in $PY_VERSIONS; do
    echo "== wheels for Python $py (manylinux x86_64)"
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d "$DEST" \
        --python-version "$py" --implementation cp \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
        --platform linux_x86_64 -r "$DEST/requirements.txt"
done
du -sh "$DEST"
echo "Carry $DEST with the working tree (the device tool carries at most 64 MiB in all); then run benchmarks/gpu_check.sh."
