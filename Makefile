# PrismRec developer entry points. Everything runs from the project venv (.venv), which
# `make venv` builds from requirements.lock; `make demo` and `make test` build it first.

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-lock
# torch is pinned to its CPU build (+cpu), which lives on the PyTorch CPU index. A local wheel
# folder (PIP_FIND_LINKS, e.g. a mirror on an offline machine) replaces that index when set.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# unsafe-best-match: take each package from whichever index has the pinned version (the
# PyTorch index also carries numpy, jinja2, ... at other versions).
WHEEL_SOURCES = $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS),\
	--extra-index-url $(TORCH_INDEX) --index-strategy unsafe-best-match)
# The text tower's weights come from an installed package; never reach for a model hub.
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv lock demo lint test test-fast airflow-ui mlflow-ui bench-quality

venv: $(STAMP)

# --compile-bytecode: every process (each CLI call, training worker, Airflow service) then reads
# .pyc files instead of compiling torch, transformers and the rest from source, which it does on
# each start where PYTHONDONTWRITEBYTECODE is set or site-packages is read-only (~2-5 s a process).
$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip install --python $(BIN)/python --compile-bytecode $(WHEEL_SOURCES) -r requirements.lock
	$(BIN)/uv pip install --python $(BIN)/python --no-deps -e .
	@touch $@

lock: venv
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 $(WHEEL_SOURCES) \
		-o requirements.lock

# A short training for the demo (the configured default is up to 40 epochs with early stopping).
DEMO_EPOCHS ?= 12

# The project's own modules as bytecode, next to the sources (git-ignored): where PYTHONDONTWRITEBYTECODE
# is set, Python reads .pyc files but never writes them, and every process (CLI call, training worker,
# Airflow task) would compile tasks/ from source again (~0.1 s each; a stale file is compiled as before).
COMPILE_OWN = $(BIN)/python -m compileall -q -j 0 tasks expectations dags mlflow

demo: venv
	@$(COMPILE_OWN)
	$(BIN)/prismrec load movielens-100k
	$(BIN)/prismrec train --epochs $(DEMO_EPOCHS)
	$(BIN)/prismrec materialize
	$(BIN)/prismrec report

# Style and correctness lints (ruff, pinned in requirements.lock); `make test` runs them first.
lint: venv
	$(BIN)/ruff check .

# Debian's chromium for the browser tests (tests/live): Playwright launches /usr/bin/chromium and
# downloads no browser. Installed with apt-get when missing (as root); elsewhere those tests skip.
.PHONY: browser
browser:
	@test -x /usr/bin/chromium || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
		|| echo "warning: no /usr/bin/chromium; the browser tests will skip"

# The whole suite against real Postgres, MLflow and Airflow (what CI runs), on TEST_WORKERS pytest-xdist
# workers (each with its own Postgres, MLflow store and homes; a file's tests stay on one worker).
# The suite's temporary folders (each worker's embedded Postgres, MLflow store and homes) are one
# folder per checkout, emptied when a run starts: in pytest's numbered folders, a pytest run started
# beside it (`make test-fast`, say) would delete all but the three newest, a running suite's Postgres too.
TEST_WORKERS ?= 2
TEST_TMP ?= /tmp/prismrec-test-$(shell printf '%s' "$(CURDIR)" | cksum | cut -d' ' -f1)
test: lint browser
	@$(COMPILE_OWN) tests
	$(BIN)/pytest tests -x -q -n $(TEST_WORKERS) --dist loadfile --basetemp=$(TEST_TMP)

# The inner loop: lint, unit tests and the DAG parse checks, no trained model (under a minute).
test-fast: lint
	$(BIN)/pytest tests/unit tests/dags/test_dags.py -q -m "not slow"

# Airflow UI on http://localhost:8080 with this project's DAGs and metadata DB (the same ones
# `prismrec train` uses); the admin password is printed on start-up. Four executor workers and one
# DAG parser (tasks/airflow_runtime.py's airflow_environment), not 32 idle workers.
airflow-ui: venv
	eval "$$($(BIN)/python -m tasks.airflow_runtime)" && PATH="$(CURDIR)/$(BIN):$$PATH" airflow standalone

# MLflow UI on http://localhost:5000 over the store the pipeline writes to; one worker process
# (the default four take 2.6 GiB for one person's browser).
mlflow-ui: venv
	$(BIN)/mlflow ui --workers 1 --backend-store-uri "$$($(BIN)/python -c 'from tasks.config import load_config; \
		from tasks.registry.store import tracking_uri; print(tracking_uri(load_config()))')"

# Quality benchmark: every baseline and PrismRec on the LOO-full split of DATASET
# (ml-100k or ml-1m); writes bench/results/quality-$(DATASET).{json,md}. BUDGET (minutes) caps
# the wall-clock training of PrismRec and SASRec each (e.g. BUDGET=50 for ml-1m on 2 CPU cores).
# PrismRec trains with the dataset's settings selected on validation (bench/quality.py's
# DATASET_SETTINGS: ml-1m reads 200-item histories with one interest) unless the environment sets them.
# NPROC sets PrismRec's torchrun processes (train.nproc, default 1: on 2 CPU cores one process with
# two threads learns more per second than two processes; docs/experiments.md). SEEDS trains PrismRec and
# SASRec once per seed and reports mean ± sd (default for ml-1m: 42,43,44; SEEDS= for one run).
comma := ,
DATASET ?= ml-100k
BUDGET ?=
SEEDS ?= $(if $(filter ml-1m,$(DATASET)),42$(comma)43$(comma)44)
bench-quality: venv
	$(if $(NPROC),PRISMREC_TRAIN__NPROC=$(NPROC)) $(BIN)/python -m bench.quality --dataset $(DATASET) $(if $(BUDGET),--budget-minutes $(BUDGET)) $(if $(SEEDS),--seeds $(SEEDS))

# Training speed: steps/s and validation time of real (cut-short) training runs on the ML-1M
# benchmark split, for the default and long-history settings, under each train.allocator;
# writes bench/results/step-time.{json,md}.
.PHONY: bench-step-time
bench-step-time: venv
	$(BIN)/python -m bench.step_time

# Publishing benchmark: top-100 for every ML-1M user through `materialize` (COPY) vs pandas.to_sql;
# writes bench/results/materialize.json.
.PHONY: bench-materialize
bench-materialize: venv
	$(BIN)/python -m bench.materialize

# Scoring as the catalogue grows: users/s and peak memory of the top-50 lists and the item
# neighbours at 3.7k, 37k and 100k items (random weights; SCORING_ITEMS=3706,37060 for others).
.PHONY: bench-scoring
bench-scoring: venv
	$(BIN)/python -m bench.scoring $(if $(SCORING_ITEMS),--items $(SCORING_ITEMS))

# Cost curve: every stage (extract, data gate, prepare, a capped training epoch, scoring, publishing)
# on synthetic data at 1x, 10x, 100x ML-1M's events in database prismrec_scale (created on
# SCALE_URL's server, dropped at the end); writes bench/results/scale.{json,md}. Not part of `make test`.
# SCALE_UNTIL=prepare runs the data stages only; SCALE_FROM=publish measures publishing again on the
# database and model a run with SCALE_KEEP=1 (--keep-database) left.
SCALE_SIZES ?= 1,10,100
SCALE_URL ?= postgresql://postgres@127.0.0.1:5432/postgres
SCALE_UNTIL ?=
SCALE_FROM ?=
SCALE_KEEP ?=
.PHONY: bench-scale
bench-scale: venv
	nice -n 10 $(BIN)/python -m bench.scale --sizes $(SCALE_SIZES) --url $(SCALE_URL) $(if $(SCALE_UNTIL),--until $(SCALE_UNTIL)) \
		$(if $(SCALE_FROM),--from $(SCALE_FROM)) $(if $(SCALE_KEEP),--keep-database)

# Decoupled interests on ML-100K: K=1 vs K=4 ablation, disentanglement figures, cold-start items
# vs id-only SASRec and popularity; writes bench/results/interests-ml-100k.{json,md}.
.PHONY: bench-interests
bench-interests: venv
	$(BIN)/python -m bench.interests

# Cold start on ML-1M (bench/cold_start.py): a time split whose last 10 % of titles to appear are new;
# PrismRec (its new-item head fitted on the train task's rehearsal, train.new_item_head, and on the other
# rehearsal for comparison), the zero-shot text model, popularity and SASRec on each user's first rating of a
# new title and of a trained one; writes bench/results/cold-start-ml-1m.{json,md}. On 2 CPU cores PrismRec's
# training takes ~10-25 minutes, the retrained rehearsal a third of that, SASRec 15.
BENCH_TMP ?= /tmp/prismrec-bench
.PHONY: bench-cold-start
bench-cold-start: venv
	$(BIN)/python -m bench.cold_start run --sasrec-seconds 900 --out $(BENCH_TMP)/cold-start.json
	$(BIN)/python -m bench.cold_start combine $(BENCH_TMP)/cold-start.json

# Training memory: peak resident memory of the training workers at each epoch, for ML-100K with
# the pipeline's defaults and ML-1M with the benchmark's settings; writes bench/results/memory.{json,md}.
# EPOCHS and MAX_STEPS shorten the runs (the output says when a run was capped).
.PHONY: bench-memory
bench-memory: venv
	$(BIN)/python -m bench.memory $(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(MAX_STEPS),--max-steps $(MAX_STEPS))

# GPU benchmark (docs/gpu.md): PrismRec on ML-1M with bench/quality.py's settings on CUDA devices
# (nccl, bf16), printing the time to validation NDCG@10 0.20 and the final figures. A GPU host may
# have no network and take few files: `make bench-gpu-prepare` (here) writes bench/gpu-assets/ (the
# ML-1M split, MiniLM as fp16 safetensors, 54 MB); `make bench-gpu` (there) trains from them.
# GPU_PYTHON: a Python that has torch with CUDA (the host's own, e.g. python3), else the venv's.
GPU_PYTHON ?= $(BIN)/python
.PHONY: bench-gpu-prepare bench-gpu
bench-gpu-prepare: venv
	$(BIN)/python -m bench.gpu_ml1m prepare
	$(BIN)/python -m bench.cold_start snapshot

bench-gpu:
	HF_HUB_OFFLINE=1 $(GPU_PYTHON) -m bench.gpu_ml1m run
