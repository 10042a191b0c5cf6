# Benchmarks (benchmarks/): serving, feature-service and training measurements, each
# `python -m benchmarks.X`. Included by the Makefile, which defines PY, RECSYS, PYTHON, STAMP and DATA.

.PHONY: soak bench-features bench-training bench bench-synth bench-ann gpu-check bench-scale bench-data bench-catalogue
SOAK_S ?= 300
SOAK_CLIENTS ?= 32

soak: $(STAMP) ## Soak: a day at 32 clients for 5 min over Redis: 2 retrains promoted by canary, a bad model rolled back, feature service and Redis restarts (loopback)
	$(PY) -m benchmarks.soak --duration $(SOAK_S) --clients $(SOAK_CLIENTS) --out runs/soak

FEAST_VENV ?= .bench/feast-venv
FEAST_VERSION ?= 0.67.0

bench-features: $(STAMP) ## Feature-service latency (gRPC, each backend) against Feast on the same data
	@# Feast gets its own virtualenv (git-ignored), never recsys's; without it recsys is measured alone
	test -x $(FEAST_VENV)/bin/feast || { $(PYTHON) -m venv $(FEAST_VENV) && \
		$(FEAST_VENV)/bin/pip install -q "feast==$(FEAST_VERSION)"; } || echo "Feast could not be installed"
	$(PY) -m benchmarks.bench_features --out .bench/run --feast-python $(FEAST_VENV)/bin/python

RECBOLE_VENV ?= .bench/recbole-venv
# RecBole 1.2.1 needs numpy < 2 and the scipy/pandas of its time; torch pinned to the CPU build
RECBOLE_PKGS ?= recbole==1.2.1 torch==2.13.0 "numpy<2" "scipy<1.12" "pandas<2.2"

bench-training: $(STAMP) ## Time to train SASRec on ML-100K: recsys to its final model against one RecBole 1.2.1 epoch
	@# RecBole gets its own virtualenv (git-ignored), never recsys's; a CUDA torch there is refused
	test -f $(RECBOLE_VENV)/.installed || { $(PYTHON) -m venv $(RECBOLE_VENV) && \
		$(RECBOLE_VENV)/bin/pip install -q $(RECBOLE_PKGS) && \
		$(RECBOLE_VENV)/bin/python -c "import torch, sys; sys.exit(torch.version.cuda is not None)" && \
		touch $(RECBOLE_VENV)/.installed; }
	TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 $(PY) -m benchmarks.bench_training --data $(DATA) --out .bench/training \
		--recbole-python $(RECBOLE_VENV)/bin/python

BENCH_CASES ?= all
BENCH_DURATION ?= 5

bench: $(STAMP) ## Serving benchmark: latency/throughput vs floor (ORT + echo), batching on/off, Score 1k, 1M-item ANN
	@# cases whose artifact is missing are skipped with the command that makes it (make demo, make bench-synth)
	nice -n 5 $(PY) -m benchmarks.bench_suite --out .bench/serving --cases $(BENCH_CASES) --duration $(BENCH_DURATION)

bench-synth: $(STAMP) ## 1M-item synthetic SASRec (topics + tastes, 1,500 sparse-gradient steps) with a norm-pruned MIPS index for `make bench`
	nice -n 19 $(RECSYS) data synth --artifact runs/synth1m/sasrec --items 1000000 --users 20000 --interactions 2000000 \
		--steps 1500 --threads 2 --ann-backend norm-pruned --target-recall 0.97

bench-ann: $(STAMP) ## ANN recall/latency sweep (norm-pruned alpha, faiss-ivf nlist x nprobe) on the 1M-item artifact's users
	nice -n 19 $(PY) -m benchmarks.bench_ann --artifact runs/synth1m/sasrec --backends norm-pruned,faiss-ivf \
		--alpha 1.0,0.9,0.8,0.7,0.6 --nlist 4096 --nprobe 16,64,256,1024 --out .bench/ann.json

gpu-check: $(STAMP) ## ONNX Runtime CPU vs CUDA latency/throughput at batch 1, 32, 256 (1M-item scoring graph)
	$(PY) -m benchmarks.gpu_check --items 1000000 --out .bench/gpu_check.json

SCALE_EVENTS ?= 10000000
SCALE_USERS ?= 100000
SCALE_ITEMS ?= 200000

bench-scale: $(STAMP) ## A 10M-event, 200k-item synthetic log end to end: prep rows/s, training events/s and peak RSS, features load, serving on 1 and 2 processes
	$(PY) -m benchmarks.bench_scale --events $(SCALE_EVENTS) --users $(SCALE_USERS) --items $(SCALE_ITEMS) --out .bench/scale

bench-data: $(STAMP) ## Data preparation (CSV, Parquet, Parquet directory) and SQLite features load of 10M synthetic rows
	$(PY) -m benchmarks.bench_data --rows 10000000 --dir .bench/data

bench-catalogue: $(STAMP) ## Next-item training events/s and peak RSS over 1.7k, 50k and 200k items: default, full and sampled softmax
	$(PY) -m benchmarks.bench_catalogue speed --items 1682,50000,200000 --out .bench/catalogue-speed.jsonl
