# Two commands for a fresh Linux machine with Python 3.11:
#   make demo   - create .venv/, install, generate a piece with the shipped model (MIDI + piano roll + JSON)
#   make test   - create .venv/, install, run the test suite
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Real MIDI for the tests (POP909 + odd files); tests that need it skip with a reason when it is absent.
export MUSICGEN_SHARED_DATA ?= $(abspath ../shared/data)
export WANDB_MODE ?= disabled

.PHONY: demo test install clean-venv

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (set PYTHON=/path/to/python3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

# torch is pinned to the CPU wheel-compatible 2.13.0; installing it first keeps pip from pulling a CUDA build.
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) generate.py output_dir=outputs/demo

test: $(STAMP)
	$(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)
