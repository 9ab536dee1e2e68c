# StreamRec code location. `make demo` and `make test` each work alone on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export STREAMREC_HOME ?= $(CURDIR)/.streamrec
export DAGSTER_HOME ?= $(STREAMREC_HOME)/dagster_home
export PYTHONWARNINGS ?= ignore::DeprecationWarning

.PHONY: setup redis chromium java demo test test-fast dev bench bench-scale bench-spark lint clean mlflow-ui

setup: $(STAMP)  ## create .venv and install the package with its test extras (quick when nothing changed)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	@touch $(STAMP)

demo: setup  ## generate data, materialise the graph on local defaults, print a summary
	$(BIN)/python -m streamrec_assets.demo

redis:  ## redis-server for the Redis online-store tests: apt-get when root, else a warning (those tests skip)
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "Installing redis-server with apt-get"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server >/dev/null 2>&1 \
	    || { apt-get update -q >/dev/null 2>&1 \
	         && DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server >/dev/null 2>&1; } || true; \
	  fi; \
	  command -v redis-server >/dev/null 2>&1 \
	  || echo "WARNING: redis-server is not installed and could not be; the Redis tests will be skipped."; \
	}

chromium:  ## Debian's chromium for the browser test (Playwright drives it): apt-get when root, else a warning
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "Installing chromium with apt-get"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 \
	    || { apt-get update -q >/dev/null 2>&1 \
	         && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; } || true; \
	  fi; \
	  command -v chromium >/dev/null 2>&1 \
	  || echo "WARNING: chromium is not installed and could not be; the browser test will be skipped (it fails under CI=true)."; \
	}

java:  ## Java 17 for the Spark engine's tests (a standalone cluster from pyspark): apt-get when root, else a warning
	@command -v java >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "Installing openjdk-17-jre-headless with apt-get"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q openjdk-17-jre-headless >/dev/null 2>&1 \
	    || { apt-get update -q >/dev/null 2>&1 \
	         && DEBIAN_FRONTEND=noninteractive apt-get install -y -q openjdk-17-jre-headless >/dev/null 2>&1; } || true; \
	  fi; \
	  command -v java >/dev/null 2>&1 \
	  || echo "WARNING: java is not installed and could not be; the Spark tests will be skipped (they fail under CI=true)."; \
	}

test: setup redis chromium java  ## the whole test suite
	$(BIN)/python -m pytest -q

test-fast: setup  ## unit and contract tests only (no servers, no end-to-end materialisation)
	$(BIN)/python -m pytest -q -m "not slow"

dev: setup  ## the Dagster UI and daemon (`dg dev`) on http://127.0.0.1:3000 (state under $$STREAMREC_HOME)
	@mkdir -p $(DAGSTER_HOME) && test -f $(DAGSTER_HOME)/dagster.yaml || cp deploy/local/dagster.yaml $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/streamrec pools
	VIRTUAL_ENV=$(CURDIR)/$(VENV) $(BIN)/dg dev --target-path $(CURDIR) --host 127.0.0.1 --port 3000

mlflow-ui: setup  ## the MLflow UI on the demo's store, http://127.0.0.1:5000
	$(BIN)/mlflow ui --backend-store-uri $${MLFLOW_TRACKING_URI:-sqlite:///$(STREAMREC_HOME)/mlflow/mlflow.db} \
		--default-artifact-root $(STREAMREC_HOME)/mlflow/artifacts --host 127.0.0.1 --port 5000

bench: setup  ## benchmarks, printed as ratios against a baseline measured in the same run
	$(BIN)/python benchmarks/bench_features.py
	$(BIN)/python benchmarks/bench_ingest.py
	$(BIN)/python benchmarks/bench_range_memory.py
	$(BIN)/python benchmarks/bench_pit.py
	$(BIN)/python benchmarks/bench_storage.py
	$(BIN)/python benchmarks/bench_executor.py

bench-scale: setup  ## one day of the whole graph with full history at 100k and 1M events/day (VOLUMES=... for more)
	$(BIN)/python benchmarks/bench_scale.py --volumes $${VOLUMES:-100000,1000000}

bench-spark: setup java  ## the heavy assets of one day, embedded engine vs a local Spark cluster (VOLUMES=...)
	$(BIN)/python benchmarks/bench_spark.py --volumes $${VOLUMES:-100000,1000000}

lint: setup
	$(BIN)/ruff check .

clean:  ## remove generated data and Dagster state (keeps .venv)
	rm -rf $(STREAMREC_HOME)
