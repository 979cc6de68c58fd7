# make demo : set up .venv, then run the BF16/FP8/INT8 demo on the built-in tiny model.
# make test : set up .venv, then run the whole test suite (CPU only; GPU tests skip).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test setup clean bench-gpu

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	# Pinned CPU torch first: a bare `torch` requirement could pull a multi-GB CUDA build.
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/quantomni demo --out demo_out

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) demo_out
