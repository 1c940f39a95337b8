# recsampled: the two commands a fresh machine needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Test processes (pytest-xdist, one test file per process at a time): 2 fits the 2-core CI.
WORKERS ?= 2

.PHONY: demo test lint format bench-loss bench-index bench-lm bench-serve clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,bench,serve]"
	touch $(STAMP)

## Run the main job end to end on the embedded default data.
demo: $(STAMP)
	$(PY) -m pipelines.demo

## Run the whole test suite (and the linter), then every docstring example in the package.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q --doctest-modules recsampled
	$(PY) -m pytest -q -n $(WORKERS) --dist loadfile

lint: $(STAMP)
	$(VENV)/bin/ruff check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

## Loss benchmark: full softmax vs tf.nn.sampled_softmax_loss vs ours (writes benchmarks/loss.json).
bench-loss: $(STAMP)
	$(PY) -m pipelines.bench_loss --output benchmarks/loss.json

## Index benchmark: Flat, HNSW, IVF-Flat, IVF-PQ and TFRS BruteForce on 10^6 x 64 synthetic items
## and on the trained MovieLens 100K model (trained into runs/ first if missing; needs the data
## at ../shared/datasets/movielens-100k). Writes benchmarks/index.json and .png.
INDEX_RUN ?= runs/movielens-100k
bench-index: $(STAMP)
	test -d $(INDEX_RUN)/towers || $(PY) -m recsampled train --config configs/movielens-100k.yaml --output $(INDEX_RUN)
	$(PY) -m pipelines.bench_index --output benchmarks/index.json --num-queries 3000 --repeats 3 --run $(INDEX_RUN)

## Language model: SampledSoftmax vs full softmax, quality and step time (writes benchmarks/lm.json).
bench-lm: $(STAMP)
	$(PY) -m pipelines.lm_example --output benchmarks/lm.json

## Retrieval benchmark: full softmax, TFRS in-batch, logQ (counts, streaming), mixed and sampled
## softmax on MovieLens 100K (if present) and synthetic data; fit throughput against TFRS
## (about 25 min on 2 cores). Writes benchmarks/retrieval.json and .png.
.PHONY: bench-retrieval
bench-retrieval: $(STAMP)
	$(PY) -m pipelines.bench_retrieval --output benchmarks/retrieval.json

## HTTP service load test on loopback: the demo artifact (make demo first) and a 10^6-item IVF
## artifact (built once into /tmp, about 8 min); about 6 min per run. Writes benchmarks/serve.json.
bench-serve: $(STAMP)
	$(PY) -m pipelines.bench_serve

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
