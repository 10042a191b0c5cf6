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
.PHONY: help setup proto test fuzz soak certs demo quality bench-features bench-training clean

help: ## List the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

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
LOCK_EXTRAS := train dev ann private
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

SOAK_S ?= 300
SOAK_CLIENTS ?= 32

soak: $(STAMP) ## Soak: Recommend at 32 clients for 5 min through 2 model swaps and a feature-service kill (loopback)
	$(PY) scripts/soak.py --duration $(SOAK_S) --clients $(SOAK_CLIENTS) --out runs/soak

certs: ## Local CA, server and client certificates and a token in certs/ (openssl, else Python's cryptography)
	@# the `cryptography` fallback comes with the dev extra; certs/ is git-ignored (it holds the CA key)
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) -m recsys.devcerts --out certs

demo: $(STAMP) ## Get ML-100K, train SASRec, serve it, print recommendations
	$(PY) scripts/demo.py --data $(DATA) --out $(DEMO_DIR)

quality: $(STAMP) ## Served NDCG@10 on ML-100K (leave-last-out), mean of 3 seeds
	$(PY) scripts/quality.py --data $(DATA) --out runs/quality --seeds 0,1,2

.PHONY: ranking-quality retrieval-quality
ranking-quality: $(STAMP) ## DeepFM / DCN-v2 / Conv1D AUC and the rating model's RMSE on ML-100K, mean of 3 seeds
	$(PY) scripts/ranking_quality.py --data $(DATA) --out runs/ranking_quality --seeds 0,1,2

retrieval-quality: $(STAMP) ## Two-tower served NDCG@10 and recall@200 on ML-100K (leave-last-out), mean of 3 seeds
	$(PY) scripts/retrieval_quality.py --data $(DATA) --out runs/retrieval_quality --seeds 0,1,2

.PHONY: cold-start dp-table
cold-start: $(STAMP) ## Cold start on ML-100K, 3 seeds: 10 % of items held out, epoch chosen on 10 % other held-out items, vs popularity
	nice -n 10 $(PY) scripts/cold_start.py --data $(DATA) --out runs/cold_start_3seeds --seeds 0,1,2 --epochs 12 \
		--config '{"min_word_items": 2, "content_bias": true, "mask_seen": false}'

dp-table: $(STAMP) ## DP-SGD SASRec on ML-100K: leave-last-out NDCG@10 at several epsilon (Opacus)
	nice -n 10 $(PY) scripts/dp_table.py --data $(DATA) --out runs/dp_table --epochs 6 --max-len 20 --epsilons 1,4,16,64

.PHONY: debias faithfulness
DEBIAS_SEEDS ?= 0,1,2
EXPLAIN_ARTIFACT ?= runs/quality/sasrec-seed0

debias: $(STAMP) ## Plain vs popularity-debiased SASRec on ML-100K: NDCG@10, coverage, Gini, tail recall
	nice -n 10 $(PY) scripts/debias.py --data $(DATA) --out runs/debias --seeds $(DEBIAS_SEEDS) \
		--variants plain,logit_adjust_0.5,pop_neg_no_logq

faithfulness: $(STAMP) ## Explanations on ML-100K: score drop removing the top explaining vs a random history item
	$(PY) scripts/faithfulness.py --artifact $(EXPLAIN_ARTIFACT) --out runs/faithfulness.json

FEAST_VENV ?= .bench/feast-venv
FEAST_VERSION ?= 0.67.0

bench-features: $(STAMP) ## Feature-service latency (gRPC, each backend) against Feast on the same data
	@# Feast gets its own virtualenv (git-ignored), never recsys's; without it recsys is measured alone
	test -x $(FEAST_VENV)/bin/feast || { $(PYTHON) -m venv $(FEAST_VENV) && \
		$(FEAST_VENV)/bin/pip install -q "feast==$(FEAST_VERSION)"; } || echo "Feast could not be installed"
	$(PY) scripts/bench_features.py --out .bench/run --feast-python $(FEAST_VENV)/bin/python

RECBOLE_VENV ?= .bench/recbole-venv
# RecBole 1.2.1 needs numpy < 2 and the scipy/pandas of its time; torch pinned to the CPU build
RECBOLE_PKGS ?= recbole==1.2.1 torch==2.13.0 "numpy<2" "scipy<1.12" "pandas<2.2"

bench-training: $(STAMP) ## Time to train SASRec on ML-100K: recsys to its final model against one RecBole 1.2.1 epoch
	@# RecBole gets its own virtualenv (git-ignored), never recsys's; a CUDA torch there is refused
	test -f $(RECBOLE_VENV)/.installed || { $(PYTHON) -m venv $(RECBOLE_VENV) && \
		$(RECBOLE_VENV)/bin/pip install -q $(RECBOLE_PKGS) && \
		$(RECBOLE_VENV)/bin/python -c "import torch, sys; sys.exit(torch.version.cuda is not None)" && \
		touch $(RECBOLE_VENV)/.installed; }
	TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 $(PY) scripts/bench_training.py --data $(DATA) --out .bench/training \
		--recbole-python $(RECBOLE_VENV)/bin/python

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

.PHONY: bench bench-synth bench-ann gpu-check
BENCH_CASES ?= all
BENCH_DURATION ?= 5

bench: $(STAMP) ## Serving benchmark: latency/throughput vs floor (ORT + echo), batching on/off, Score 1k, 1M-item ANN
	@# cases whose artifact is missing are skipped with the command that makes it (make demo, make bench-synth)
	nice -n 5 $(PY) scripts/bench_suite.py --out .bench/serving --cases $(BENCH_CASES) --duration $(BENCH_DURATION)

bench-synth: $(STAMP) ## 1M-item synthetic SASRec (topics + tastes, 1,500 sparse-gradient steps) with a norm-pruned MIPS index for `make bench`
	nice -n 19 $(RECSYS) data synth --artifact runs/synth1m/sasrec --items 1000000 --users 20000 --interactions 2000000 \
		--steps 1500 --threads 2 --ann-backend norm-pruned --target-recall 0.97

bench-ann: $(STAMP) ## ANN recall/latency sweep (norm-pruned alpha, faiss-ivf nlist x nprobe) on the 1M-item artifact's users
	nice -n 19 $(PY) scripts/bench_ann.py --artifact runs/synth1m/sasrec --backends norm-pruned,faiss-ivf \
		--alpha 1.0,0.9,0.8,0.7,0.6 --nlist 4096 --nprobe 16,64,256,1024 --out .bench/ann.json

gpu-check: $(STAMP) ## ONNX Runtime CPU vs CUDA latency/throughput at batch 1, 32, 256 (1M-item scoring graph)
	$(PY) scripts/gpu_check.py --items 1000000 --out .bench/gpu_check.json

clean: ## Remove build outputs and runs (keeps .venv and data)
	rm -rf runs build *.egg-info .pytest_cache
