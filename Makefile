# recsys: the single entry point. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
ORT ?= gpu            # ONNX Runtime build: gpu (onnxruntime-gpu, runs on CPU too) or cpu
DATA ?= data/ml-100k
DEMO_DIR ?= runs/demo
EPOCHS ?= 200
PY := $(VENV)/bin/python
RECSYS := $(VENV)/bin/recsys
STAMP := $(VENV)/.installed-$(strip $(ORT))

.DEFAULT_GOAL := help
.PHONY: help setup proto test fuzz certs demo quality bench-features clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

setup: $(STAMP) ## Create .venv and install recsys with everything it needs (ORT=gpu|cpu)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# the two ONNX Runtime builds share one module: remove the other before installing
	$(PY) -m pip uninstall -q -y onnxruntime onnxruntime-gpu >/dev/null 2>&1 || true
	$(PY) -m pip install -q -e ".[$(strip $(ORT)),train,dev]"
	rm -f $(VENV)/.installed-*
	touch $@

proto: $(STAMP) ## Regenerate recsys/v1 from protos/
	$(PY) -m recsys.protogen

test: $(STAMP) ## Run the test suite
	$(PY) -m pytest -q

fuzz: $(STAMP) ## Property-based hostile-input tests with 2,000 requests per RPC (make test runs 50)
	RECSYS_FUZZ_EXAMPLES=2000 $(PY) -m pytest -q tests/test_hostile_input.py

certs: ## Local CA, server and client certificates and a token in certs/ (openssl, else Python's cryptography)
	@# the `cryptography` fallback comes with the dev extra; certs/ is git-ignored (it holds the CA key)
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) -m recsys.devcerts --out certs

demo: $(STAMP) ## Get ML-100K, train SASRec, serve it, print recommendations
	$(PY) scripts/demo.py --data $(DATA) --out $(DEMO_DIR)

quality: $(STAMP) ## Served NDCG@10 on ML-100K (leave-last-out), mean of 3 seeds
	$(PY) scripts/quality.py --data $(DATA) --out runs/quality --seeds 0,1,2

FEAST_VENV ?= .bench/feast-venv
FEAST_VERSION ?= 0.67.0

bench-features: $(STAMP) ## Feature-service latency (gRPC, each backend) against Feast on the same data
	@# Feast gets its own virtualenv (git-ignored), never recsys's; without it recsys is measured alone
	test -x $(FEAST_VENV)/bin/feast || { $(PYTHON) -m venv $(FEAST_VENV) && \
		$(FEAST_VENV)/bin/pip install -q "feast==$(FEAST_VERSION)"; } || echo "Feast could not be installed"
	$(PY) scripts/bench_features.py --out .bench/run --feast-python $(FEAST_VENV)/bin/python

clean: ## Remove build outputs and runs (keeps .venv and data)
	rm -rf runs build *.egg-info .pytest_cache
