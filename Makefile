# Quick start: `make demo` and `make test`; both set up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
# The CPU build; GPU hosts use the Dockerfile (or TORCH=torch for the CUDA wheel).
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup browser demo test test-quick lint bench clean conformance tiny gpu-wheels gpu-rehearsal

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -qq --upgrade pip
	$(BIN)/pip install -qq "$(TORCH)"
	$(BIN)/pip install -qq -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/editx batch manifests/demo.csv --engine dsp --out-dir demo-out --cache-dir demo-out/.cache

# The browser tests drive Debian's Chromium (never a downloaded one); without it they are skipped.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "make: no Chromium (as root: apt-get install chromium); the browser tests will be skipped"

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

test-quick: $(STAMP) browser  # the edit-test loop: leaves out the tests marked slow
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check editx_cli tests benchmarks scripts

bench: $(STAMP)
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/decode.py
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/delivery.py
	$(BIN)/python benchmarks/longform_qa.py
	$(BIN)/python benchmarks/listen.py
	$(BIN)/python benchmarks/transcribe.py
	$(BIN)/python benchmarks/vocoder.py
	$(BIN)/python benchmarks/admission.py

clean:
	rm -rf demo-out .pytest_cache test-artifacts .rehearsal

# A lent GPU reaches no package index: the wheels benchmarks/gpu_check.sh needs there, for the
# image's Python (3.12), into .whl/ (carried with the tree; at most 60 MiB).
gpu-wheels:
	bash scripts/gpu_wheels.sh 3.12 .whl

# gpu_check.sh on this CPU with only the image's packages and the wheelhouse (tiny shape).
gpu-rehearsal:
	bash scripts/gpu_rehearsal.sh

# Needs the released checkpoints: EDITX_MODEL_DIR, EDITX_TOKENIZER_DIR, EDITX_SRC.
conformance: $(STAMP)
	$(BIN)/python -m pytest -q -rs tests/test_conformance.py
