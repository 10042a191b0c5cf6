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
# `make setup` installs exactly these pins (written by `make lock`), one lock per ORT
LOCK := requirements/$(strip $(ORT)).lock

.DEFAULT_GOAL := help
.PHONY: help setup proto test fuzz certs demo retrain-demo node-client clean

help: ## List the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

# The laboratory's targets (benchmarks, experiments) live beside their code; `make help` lists them too
include benchmarks/benchmarks.mk experiments/experiments.mk

setup: $(STAMP) ## Create .venv and install recsys with everything it needs (ORT=gpu|cpu)

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# the two ONNX Runtime builds share one module: remove the other before installing
	$(PY) -m pip uninstall -q -y onnxruntime onnxruntime-gpu >/dev/null 2>&1 || true
	$(PY) -m pip install -q -r $(LOCK)
	$(PY) -m pip install -q -e . --no-deps
	rm -f $(VENV)/.installed-*
	touch $@

# The locks' extras: the ONNX Runtime build of each, plus these
LOCK_EXTRAS := train dev ann private otel
# torch must be the CPU build (2.13.0+cpu): uv ignores pip's config, so it is told where that wheel
# lies (this machine's pip find-links); a CUDA torch (nvidia-* packages) in a lock is refused below
TORCH_CPU_WHEELS ?= /opt/wheels
LOCK_FLAGS ?= --python-version 3.11 --python-platform x86_64-unknown-linux-gnu --find-links $(TORCH_CPU_WHEELS)

.PHONY: lock lint
lock: $(STAMP) ## Re-resolve requirements/{cpu,gpu}.lock from pyproject.toml (UPGRADE=1: newest allowed versions)
	@# written beside the lock (which uv reads for the pins to keep) and moved over it once checked
	set -e; trap 'rm -f requirements/*.lock.new' EXIT; for ort in cpu gpu; do lock=requirements/$$ort.lock; cp $$lock $$lock.new; \
		$(VENV)/bin/uv pip compile -q pyproject.toml $(LOCK_FLAGS) $(if $(filter 1,$(UPGRADE)),--upgrade) \
			$(foreach e,$$ort $(LOCK_EXTRAS),--extra $(e)) --custom-compile-command "make lock" -o $$lock.new; \
		if grep -iE '^(nvidia-|torch==[^+]*$$)' $$lock.new; then echo "$$lock: CUDA torch, not written" >&2; exit 1; fi; \
		mv $$lock.new $$lock; done
	@echo "now: make setup && make proto (the stubs embed grpcio-tools' version) && make test"

proto: $(STAMP) ## Regenerate recsys/v1 from protos/ with the locked grpcio-tools
	$(PY) -m recsys.protogen

lint: $(STAMP) ## ruff (lint, format check) and the import contracts (lint-imports), all set in pyproject.toml
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

test: $(STAMP) ## Run the test suite
	$(PY) -m pytest -q

fuzz: $(STAMP) ## Property-based hostile-input tests with 2,000 requests per RPC (make test runs 50; CI runs both)
	RECSYS_FUZZ_EXAMPLES=2000 $(PY) -m pytest -q tests/test_hostile_input.py

node-client: ## Install @grpc/grpc-js and @grpc/proto-loader into build/node-client (npm; for the Node client test)
	mkdir -p build/node-client
	cd build/node-client && npm install --silent --no-audit --no-fund @grpc/grpc-js @grpc/proto-loader

certs: ## Local CA, server and client certificates and a token in certs/ (openssl, else Python's cryptography)
	@# the `cryptography` fallback comes with the dev extra; certs/ is git-ignored (it holds the CA key)
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) -m recsys.devcerts --out certs

demo: $(STAMP) ## Get ML-100K, train SASRec, serve it, print recommendations
	$(PY) scripts/demo.py --data $(DATA) --out $(DEMO_DIR)

retrain-demo: $(STAMP) ## Retrain twice on growing ML-100K (new items, users, a feature column): load, publish, canary, promote under load
	$(PY) scripts/retrain_demo.py --data $(DATA) --out runs/retrain-demo

# --- Containers (docker/): images built from wheelhouses prepared here, so `docker build` needs
# no PyPI access; OFFLINE=1 builds the bases locally too (debootstrap), for machines without a registry.
BASE_IMAGE ?= python:3.11-slim
IMAGE_PYTHON ?= 3.11
CUDA_BASE_IMAGE ?= nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
CUDA_PYTHON ?= 3.12
REDIS_IMAGE ?= redis:7.2-bookworm
TAG ?= latest
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
COMPOSE_PROJECT_NAME ?= recsys
ifeq ($(OFFLINE),1)
BASE_IMAGE := recsys/base:bookworm
CUDA_BASE_IMAGE := recsys/base:bookworm
CUDA_PYTHON := $(IMAGE_PYTHON)
REDIS_IMAGE := recsys/redis:local
endif
WHEELS := docker/wheels
HOST_PY := $(if $(wildcard $(PY)),$(PY),$(PYTHON))
PLATFORMS := --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
	--platform manylinux2014_x86_64 --platform any
# pip evaluates environment markers for the host's Python, not --python-version: wheels that only
# older patch releases need (redis wants async-timeout below 3.11.3; Debian bookworm has 3.11.2)
MARKER_WHEELS := "async-timeout>=4.0.3"
IMAGES := feature-service inference-server trainer inference-server-cuda
export REDIS_IMAGE COMPOSE_PROJECT_NAME
export RECSYS_TAG := $(TAG)

.PHONY: docker docker-wheels docker-base up down k8s-validate

docker-wheels: ## Wheelhouses in docker/wheels/{serve,train,gpu} (git-ignored) for offline image builds
	rm -rf $(WHEELS)/src && $(HOST_PY) -m pip wheel -q --no-deps -w $(WHEELS)/src .
	@# pinned: each wheelhouse holds exactly one version of each package, resolved here once
	set -e; whl=$$(ls $(WHEELS)/src/recsys-*.whl); for spec in serve:cpu:$(IMAGE_PYTHON) train:cpu,train:$(IMAGE_PYTHON) \
		gpu:gpu:$(CUDA_PYTHON); do IFS=: read -r dir extras pyver <<< "$$spec"; rm -f $(WHEELS)/$$dir/recsys-*.whl; \
		$(HOST_PY) -m pip download -q --only-binary=:all: --implementation cp --python-version $$pyver $(PLATFORMS) \
			-d $(WHEELS)/$$dir "$$whl[$$extras]" $(MARKER_WHEELS); \
		cp $$whl $(WHEELS)/$$dir/; done

docker-base: ## OFFLINE=1 bases: Debian bookworm + Python 3.11 by debootstrap, and a Redis image on it
	docker/build-base.sh recsys/base:bookworm
	docker image inspect recsys/redis:local >/dev/null 2>&1 || \
		docker build -q -f docker/redis-local.Dockerfile --build-arg BASE_IMAGE=recsys/base:bookworm -t recsys/redis:local docker

docker: docker-wheels $(if $(filter 1,$(OFFLINE)),docker-base) ## Build the images (OFFLINE=1: no registry needed); print their sizes
	docker build -f docker/feature-service.Dockerfile --build-arg BASE_IMAGE=$(BASE_IMAGE) -t recsys/feature-service:$(TAG) $(WHEELS)/serve
	docker build -f docker/inference-server.Dockerfile --build-arg BASE_IMAGE=$(BASE_IMAGE) -t recsys/inference-server:$(TAG) $(WHEELS)/serve
	install -m 0755 docker/retrain.sh $(WHEELS)/train/retrain.sh  # the recipe goes into the trainer image
	docker build -f docker/trainer.Dockerfile --build-arg BASE_IMAGE=$(BASE_IMAGE) -t recsys/trainer:$(TAG) $(WHEELS)/train
	docker build -f docker/inference-server-cuda.Dockerfile --build-arg BASE_IMAGE=$(CUDA_BASE_IMAGE) \
		-t recsys/inference-server-cuda:$(TAG) $(WHEELS)/gpu
	@docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E '^recsys/($(subst $(eval) ,|,$(IMAGES))):$(TAG) '

up: ## Run the stack (Redis, trainer job, feature service, inference server); RECSYS_DATA=dir, RECSYS_EPOCHS=n
	$(COMPOSE) -f docker/compose.yaml up -d
	@echo "inference server: localhost:$${RECSYS_INFERENCE_PORT:-50052}  (make down to stop)"

down: ## Stop the stack: remove its containers, network and volumes
	$(COMPOSE) -f docker/compose.yaml down --volumes --remove-orphans --timeout 20

k8s-validate: $(STAMP) ## Validate docker/k8s manifests offline against bundled Kubernetes JSON schemas
	$(PY) -m pytest -q tests/deploy/test_k8s.py

clean: ## Remove build outputs and runs (keeps .venv and data)
	rm -rf runs build *.egg-info .pytest_cache
