# recsampled: the two commands a fresh machine needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint format bench-loss clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,bench]"
	touch $(STAMP)

## Run the main job end to end on the embedded default data.
demo: $(STAMP)
	$(PY) -m pipelines.demo

## Run the whole test suite (and the linter).
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

## Loss benchmark: full softmax vs tf.nn.sampled_softmax_loss vs ours (writes benchmarks/loss.json).
bench-loss: $(STAMP)
	$(PY) -m pipelines.bench_loss --output benchmarks/loss.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
