# rfstore: the two commands of the README's quickstart, plus the benchmark.
#   make demo   create .venv, install rfstore, run the embedded demo end to end
#   make test   create .venv, install rfstore with its dev extra, run the test suite
#   make bench  the all-units workload against rfstore plan, the conv sample against Captum, the activations stage,
#               netdissect's memory as images grow 10x (slow, about an hour; never part of make test)
#   make bench-gpu  on a CUDA machine: the GPU tests, then the whole default workload over 10k images
#   make docs   rewrite docs/cli.md from the command line's own help (tests/test_docs.py fails until it is current)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -qq --disable-pip-version-check

.PHONY: demo test test-slow bench bench-gpu docs clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(VENV)/bin/python
	$(PIP) -e '.[dev,dist]'
	touch $(VENV)/.installed $@

demo: $(VENV)/.installed
	$(VENV)/bin/rfstore demo demo-out/demo.zarr

test: $(VENV)/.installed-dev
	@scripts/ensure-chromium
	@$(PY) -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

test-slow: $(VENV)/.installed-dev
	$(PY) -m pytest -q -m slow

bench: $(VENV)/.installed-dev
	$(PY) bench/all_units.py
	$(PY) bench/occlusion.py
	$(PY) bench/netdissect_memory.py

bench-gpu: $(VENV)/.installed-dev
	$(PY) -m pytest -q -p no:cacheprovider tests/test_gpu.py
	$(PY) bench/zhou_workload.py --images 10000 --device cuda --out bench-out/zhou

docs: $(VENV)/.installed
	$(PY) scripts/cli_reference.py

clean:
	rm -rf demo-out bench-out .pytest_cache
