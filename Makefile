# `make demo` and `make test` are the two commands of the README; both set up first.
VENV ?= .venv
PY := $(VENV)/bin/python
DVC := $(VENV)/bin/dvc
# Pinned first and alone so a CPU-only machine never resolves a multi-GB CUDA build.
TORCH ?= torch==2.13.0
export DVC_NO_ANALYTICS := 1
export PYTHONUNBUFFERED := 1

.PHONY: setup test lint demo sweep ablation plots plots-template repro coco bench clean

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
	$(PY) -m tools.overrides configs/demo.yaml | xargs -d '\n' $(DVC) exp run --temp -n $$name && \
	$(PY) -m tools.report --exp $$name

# A grid of clip_threshold values, one queued DVC experiment each per training seed (run one
# at a time in temp copies; detect and clip_score come from the run-cache), then the compact
# table, the paired differences against the base with their intervals, and the plot.
# Queued only once the last queue worker has exited (tools/queue_idle.py says why).
#   make sweep                                       # the demo (run `make demo` first)
#   make sweep SEEDS=5                               # training seeds 0-4 per threshold
#   make sweep PROFILE=coco GRID=0.22,0.26,0.30      # params.yaml as committed
PROFILE ?= demo
SWEEP_CONFIGS_demo := configs/demo.yaml configs/sweep-demo.yaml
GRID_demo := 0.4,0.6,0.8
GRID_coco := 0.22,0.26,0.30
GRID ?= $(GRID_$(PROFILE))
# Training seeds per configuration: 3 on the demo (the seed moves CIDEr more than the arms
# do); one on COCO, where each seed is a full training run (README: cost per seed).
SEEDS_demo := 3
SEEDS_coco := 1
SEEDS ?= $(SEEDS_$(PROFILE))
sweep: export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
sweep: setup
	$(PY) -m tools.queue_idle
	name=sweep-$$(date +%Y%m%d-%H%M%S) && \
	$(PY) -m tools.overrides $(SWEEP_CONFIGS_$(PROFILE)) --set clip_threshold=$(GRID) \
	    --seeds $(SEEDS) \
	    | xargs -d '\n' $(DVC) exp run --queue -n $$name && \
	$(DVC) exp run --run-all -j 1 && \
	$(PY) -m tools.report --prefix $$name- --plot plots/sweep/thresholds.csv

# Does grounded augmentation help captioning? The same LoRA run on full-image examples only
# (assemble.max_region_ratio=0) and on full-image + region examples (1.0), same steps, same
# preprocessing, each once per training seed, printed beside the zero-shot base with the paired
# difference of each arm against full images only.
#   make ablation                                    # the demo (run `make demo` first)
#   make ablation SEEDS=5
#   make ablation PROFILE=coco
ablation: export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
ablation: setup
	$(PY) -m tools.queue_idle
	name=ablation-$$(date +%Y%m%d-%H%M%S) && \
	$(PY) -m tools.overrides $(SWEEP_CONFIGS_$(PROFILE)) --set assemble.max_region_ratio=0,1.0 \
	    --seeds $(SEEDS) \
	    | xargs -d '\n' $(DVC) exp run --queue -n $$name && \
	$(DVC) exp run --run-all -j 1 && \
	$(PY) -m tools.report --prefix $$name- --reference assemble.max_region_ratio=0

# Every plot (training curves, threshold sweeps, galleries) as one offline HTML page.
plots: setup
	$(DVC) plots show --open

# Rebuild the offline template of `dvc plots show` (plots.html_template in .dvc/config): the
# vega, vega-lite and vega-embed builds dvc-render loads from a CDN, inlined from npm.
VEGA_PACKAGES := vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2
plots-template:
	tmp=$$(mktemp -d) && (cd $$tmp && npm pack -q $(VEGA_PACKAGES) >/dev/null) && \
	mkdir -p configs/plots/vendor && \
	{ sed -n '1,/<!-- scripts -->/p' configs/plots/page.html; \
	  for pkg in $(VEGA_PACKAGES); do name=$${pkg%@*}; \
	    mkdir -p $$tmp/$$name && tar xzf $$tmp/$$name-$${pkg#*@}.tgz -C $$tmp/$$name && \
	    cp $$tmp/$$name/package/LICENSE configs/plots/vendor/LICENSE-$$name && \
	    echo "<script>/* $$pkg, $$(sed -n 's/^Copyright/Copyright/p' $$tmp/$$name/package/LICENSE | head -1) */" && \
	    cat $$tmp/$$name/package/build/$$name.min.js && echo "</script>"; done; \
	  sed -n '/<!-- scripts -->/,$$p' configs/plots/page.html | tail -n +2; \
	} > configs/plots/offline.html && rm -rf $$tmp

# Retrain the demo's tiny models (assets/demo_models, committed) byte for byte: ~11 min on
# one CPU core; `make demo` only loads them.
.PHONY: demo-models
demo-models: setup
	$(PY) -m src.demo.weights --out assets/demo_models

# The real run on data/coco with hub models (see README).
repro: export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
repro: setup
	@test -f data/coco/annotations/captions_train2017.json || { echo "COCO 2017 not found in \
	data/coco: run 'make coco' (the images params.yaml samples; all of train2017 is ~19 GB) or 'ln -s /path/to/coco2017 data/coco'"; exit 1; }
	$(DVC) repro

coco: setup
	$(PY) -m src.data.download --out data/coco --params params.yaml

clean:
	rm -rf data/interim data/processed metrics plots models dvclive
