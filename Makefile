# `make demo` and `make test` are the two commands of the README; both set up first.
VENV ?= .venv
PY := $(VENV)/bin/python
DVC := $(VENV)/bin/dvc
# Pinned first and alone so a CPU-only machine never resolves a multi-GB CUDA build.
TORCH ?= torch==2.13.0
export DVC_NO_ANALYTICS := 1
export PYTHONUNBUFFERED := 1

.PHONY: setup test lint demo repro coco bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

lint: setup
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest

# The whole DAG offline on synthetic COCO with tiny models, as a DVC experiment
# (params.yaml stays untouched), then the metrics table.
demo: export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
demo: setup
	name=demo-$$(date +%Y%m%d-%H%M%S) && \
	$(PY) -m stages.overrides configs/demo.yaml | xargs -d '\n' $(DVC) exp run --temp -n $$name && \
	$(PY) -m stages.report --exp $$name

# Retrain the demo's tiny models (assets/demo_models, committed) byte for byte: ~40 min on
# one CPU core; `make demo` only loads them.
.PHONY: demo-models
demo-models: setup
	$(PY) -m src.models.demo_models --out assets/demo_models

# The real run on data/coco with hub models (see README).
repro: export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
repro: setup
	@test -f data/coco/annotations/captions_train2017.json || { echo "COCO 2017 not found in \
	data/coco: run 'make coco' (downloads ~19 GB) or 'ln -s /path/to/coco2017 data/coco'"; exit 1; }
	$(DVC) repro

coco: setup
	$(PY) -m src.data.download --out data/coco

clean:
	rm -rf data/interim data/processed metrics plots models dvclive
