# Two commands for a fresh Linux machine with Python 3.11:
#   make demo   - create .venv/, install, generate a piece with the shipped model (MIDI + piano roll + JSON)
#   make test   - create .venv/, install, run the test suite
#   make studio - create .venv/, install, start the local web studio on http://127.0.0.1:8000/ (PORT=N to change)
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Real MIDI for the tests (POP909 + odd files); tests that need it skip with a reason when it is absent.
export MUSICGEN_SHARED_DATA ?= $(abspath ../shared/data)
export WANDB_MODE ?= disabled

.PHONY: demo test install clean-venv studio browser

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

test: $(STAMP) browser
	$(PY) -m pytest -q

PORT ?= 8000
studio: $(STAMP)
	$(PY) -m musicgen.studio --port $(PORT)

# tests/test_studio.py drives the studio in Debian's headless Chromium. Install it where we can (root with apt-get;
# about 45 s with `apt-get update`, measured): quietly, and never failing the build: without a browser that test
# skips and says why.
APT_BROWSER := DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium + chromium-driver for the browser test (apt-get)"; \
	  { $(APT_BROWSER) >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && $(APT_BROWSER) >/dev/null 2>&1; }; } \
	    || echo "note: could not install chromium (apt-get failed): the browser test will skip"; \
	else echo "note: no chromium/chromedriver and not root with apt-get: the browser test will skip"; fi

clean-venv:
	rm -rf $(VENV)
