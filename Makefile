# adamshap: `make setup` builds .venv (once), `make demo` runs the whole pipeline on the demo corpus,
# `make test` runs every test (integration included), `make lint` checks style.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ADAMSHAP := $(VENV)/bin/adamshap
STAMP := $(VENV)/.adamshap-setup
TORCH_VERSION := 2.13.0
# Keep in sync with curation.demo_corpus.DEMO_APT_PACKAGES (a test checks it).
DEMO_APT_PACKAGES := fortunes fortunes-min fortune-anarchism fortunes-bofh-excuses \
	fortunes-debian-hints bible-kjv-text bible-kjv wordnet-base dict-devil jargon-text \
	python3.11-doc
# Debian packages the tests need: Chromium renders the HTML reports (tests/curation/test_report_pages.py).
TEST_APT_PACKAGES := chromium
APT_PACKAGES := $(DEMO_APT_PACKAGES) $(TEST_APT_PACKAGES)
DEMO_MANIFEST := data_manifests/demo.yaml
DEMO_CORPUS := data_manifests/generated/demo_corpus.jsonl
DEMO_OUT := runs/demo

# Offline settings (flows/prefect_env.py sets them too; here they also cover plain `prefect`).
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
export HF_HUB_OFFLINE ?= 1

.PHONY: help setup apt-packages demo test test-fast lint format bench bench-fidelity \
	bench-source-id bench-pruning bench-throughput bench-speed bench-gpu clean-demo

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

setup: $(STAMP)  ## create .venv, install torch 2.13.0 + the project, demo + test Debian packages

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory apt-packages
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip setuptools wheel
	$(PY) -m pip install "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

apt-packages:  ## install the demo corpus's and the tests' Debian packages (root + apt-get only; else skipped)
	@if ! command -v apt-get >/dev/null 2>&1; then \
		echo "setup: no apt-get; skipping the Debian packages ($(APT_PACKAGES))"; \
	elif dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
		echo "setup: Debian packages already installed"; \
	elif [ "$$(id -u)" != "0" ]; then \
		echo "setup: not root; for the demo corpus and the browser test run: sudo apt-get install -y $(APT_PACKAGES)"; \
	else \
		(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $(APT_PACKAGES)) \
		|| echo "setup: warning: apt-get failed; the demo corpus and the browser test need: $(APT_PACKAGES)"; \
	fi

$(DEMO_CORPUS): | $(STAMP)
	$(ADAMSHAP) corpus build demo --out $(DEMO_CORPUS)

demo: setup $(DEMO_CORPUS)  ## build the demo corpus if needed, run `adamshap curate` on it
	$(ADAMSHAP) curate $(DEMO_MANIFEST) --out $(DEMO_OUT)
	@echo "HTML reports: $$($(PY) -c 'import json; d = json.load(open("$(DEMO_OUT)/curate.json")); print(d["report_html"], d["prune_report_html"])')"

test: setup  ## run every test, integration included (what CI runs)
	$(PY) -m pytest -q

test-fast: setup  ## unit tests only (-m "not integration")
	$(PY) -m pytest -q -m "not integration"

lint: setup  ## ruff check + format --check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup  ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: bench-fidelity bench-source-id bench-pruning  ## every benchmark (slow)

bench-fidelity: setup  ## estimator fidelity vs LOO / MC Shapley
	$(PY) -m benchmarks.fidelity

bench-source-id: setup  ## source identification (corpus built by `adamshap corpus build demo`)
	$(PY) -m benchmarks.source_id

PRUNING = $(PY) -m benchmarks.pruning --coupled-order --pack
bench-pruning: setup  ## the pruning benchmark's current protocol (hours on 2 cores); quality rules on held-out junk
	for s in pydocs wordnet; do \
	  $(PRUNING) --scenarios $$s --steps 2400 --seeds 3 --results benchmarks/results/regime2400 \
	    --tag pruning_$${s}_pack2400_all --arms adamshap,dsir,random,perplexity || exit 1; \
	  mkdir -p runs/benchmarks/pruning_$${s}_pack2400; \
	  cp -rn runs/benchmarks/pruning_$${s}_pack2400_all/$$s runs/benchmarks/pruning_$${s}_pack2400/; \
	  $(PRUNING) --scenarios $$s --steps 2400 --seeds 5 --results benchmarks/results/regime2400 \
	    --tag pruning_$${s}_pack2400 --arms adamshap,dsir || exit 1; \
	done
	$(PRUNING) --scenarios none --steps 1200 --seeds 3 --results benchmarks/results/regime1200 \
	  --tag pruning_none_pack --arms adamshap,dsir,random,perplexity
	$(PY) -m benchmarks.quality_heldout --run runs/benchmarks/pruning_none_pack/none/scores

bench-throughput: setup  ## scored vs plain throughput and memory (CPU grid)
	$(PY) -m benchmarks.throughput

bench-speed: setup  ## speed vs fidelity of the cheaper contractions, with a profile
	$(PY) -m benchmarks.speed_fidelity

bench-gpu:  ## on a CUDA machine: scorer precision check + GPU throughput grid (< 10 min)
	bash benchmarks/gpu_check.sh

clean-demo:  ## remove the demo outputs (the cache lives in there too)
	rm -rf $(DEMO_OUT)
