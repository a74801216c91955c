# The two entry points of the README. Both install what they need first (CPU build of torch, then this package).
PYTHON ?= python3
PIP_INSTALL = $(PYTHON) -m pip install -q

.PHONY: install install-test demo demo-quick test benchmark

install:
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) -e .

install-test: install
	$(PIP_INSTALL) -e ".[test]"

# Main job on the embedded easy-VQA data: pretrain -> LoRA VQA -> evaluate -> publish -> pipeline().
demo: install
	$(PYTHON) run_scripts/demo.py

demo-quick: install
	$(PYTHON) run_scripts/demo.py --quick

# The whole test suite (what CI runs).
test: install-test
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest -q

benchmark: install
	$(PYTHON) benchmarks/run_benchmarks.py
