# The two entry points of the README. Both install what they need first (CPU build of torch, then this package).
PYTHON ?= python3
PIP_INSTALL = $(PYTHON) -m pip install -q

.PHONY: install install-test demo demo-quick test benchmark real-benchmark gpu-wheels

install:
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) -e ".[demo,plots,video]"

# The test extras, and Debian's headless Chromium for the browser test of the Space app (where apt-get can install
# it; elsewhere that test skips and says why).
install-test: install
	$(PIP_INSTALL) -e ".[test]"
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
		echo "No Chromium: the Space app's browser test will skip."

# Main job on the embedded easy-VQA data: pretrain -> LoRA VQA -> evaluate -> publish -> pipeline().
demo: install
	mm demo

demo-quick: install
	mm demo --quick

# The whole test suite (what CI runs), one pytest-xdist worker per core, each test file on one worker.
test: install-test
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest -q -n 2 --dist loadfile

benchmark: install
	$(PYTHON) benchmarks/run_benchmarks.py

# The wheels benchmarks/gpu_check.sh installs on an offline GPU machine (PY_VERSIONS="3.11 3.12 3.13" by default).
gpu-wheels: install
	PYTHON=$(PYTHON) bash benchmarks/download_gpu_wheels.sh

# Pretrained vs from-scratch vision towers on real images (Fashion-MNIST, OpenClipArt); writes its table in RESULTS.md.
real-benchmark: install-test
	mm real-benchmark
