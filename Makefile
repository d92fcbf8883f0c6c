# The two commands of the README: `make demo` (the main job, embedded) and `make test` (the whole suite).
# Both set up everything they need on a fresh machine (Python 3.11+, apt for the ClickHouse server).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
DURATION ?= 60
# Test processes (pytest-xdist; an idle one takes tests queued for another): the integration tests mostly
# wait on brokers, servers and group joins, so two share two cores well.
TEST_PROCESSES ?= 2

.PHONY: demo test unit integration chaos lint typecheck bench bench-quick bench-report bench-steady up down clean compiled

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP)

# The compiled hot path (pipeline/compiled.py): mypyc builds the per-event modules into pipeline/_compiled/
# when the build is missing or older than their source (a few seconds to check, ~25 s to build). Needs gcc and
# the Python headers. Without a build the source runs: same results, slower. (The build itself runs with
# ENGAGEMENT_COMPILED=off: a stale build stops every command under `required`, this one included.)
compiled: $(STAMP)
	ENGAGEMENT_COMPILED=off $(BIN)/engagement compile

demo: $(STAMP)
	ENGAGEMENT_COMPILED=off $(BIN)/engagement compile || echo "note: no compiled hot path (see above); the demo runs the source"
	$(BIN)/engagement demo --duration $(DURATION) --data-dir var

# Unit tests, lint and types, then integration tests against real services: the embedded broker and
# chDB, and a Debian ClickHouse 18.16 server that this target installs (apt) and starts if needed; promtool
# (Debian's prometheus package, installed the same way) checks and unit-tests deploy/prometheus/.
# The suite runs the compiled hot path (ENGAGEMENT_COMPILED=required: a stale build fails at import), and
# tests/unit/test_compiled.py compares it with the source on the same traffic.
test: $(STAMP) lint typecheck compiled
	./tests/services/clickhouse-server.sh install
	./tests/services/prometheus.sh install
	ENGAGEMENT_COMPILED=required $(BIN)/python -m pytest -q -n $(TEST_PROCESSES) --dist worksteal tests

unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration" tests

integration: $(STAMP)
	./tests/services/clickhouse-server.sh install
	./tests/services/prometheus.sh install
	$(BIN)/python -m pytest -q -m integration tests

# The fault tests alone (also part of `make test`): kills, a ClickHouse outage, rebalances, duplicates, poison
# input and the dead-letter brake, each ending with every ClickHouse result equal to the reference.
chaos: $(STAMP)
	./tests/services/clickhouse-server.sh install
	$(BIN)/python -m pytest -q -m chaos tests

# Benchmarks are not tests: figures as ratios against baselines measured in the same run.
bench: compiled
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	ENGAGEMENT_COMPILED=required $(BIN)/python bench/harness.py

bench-quick: compiled
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	ENGAGEMENT_COMPILED=required $(BIN)/python bench/harness.py --quick

# The main thread's cost per event as the states age on live-paced traffic (no Kafka, no ClickHouse).
bench-steady: compiled
	ENGAGEMENT_COMPILED=required $(BIN)/python bench/steady_state.py

# The account report over 10,000,000 raw events in the embedded store (issue 3's < 2 s target).
bench-report: $(STAMP)
	$(BIN)/python bench/report.py

lint: $(STAMP)
	$(BIN)/ruff check pipeline tests bench
	$(BIN)/ruff format --check pipeline tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

# The pipeline on Docker Compose (deploy/compose/compose.yaml): Kafka, ClickHouse, the migrations, WORKERS
# workers, Prometheus, Grafana and live traffic (TRAFFIC= leaves the generator out). `make down` removes it
# all, data included.
COMPOSE := docker compose -f deploy/compose/compose.yaml
WORKERS ?= 2
TRAFFIC ?= 1

up:
	$(COMPOSE) $(if $(TRAFFIC),--profile traffic) up --detach --build --scale worker=$(WORKERS)

down:
	$(COMPOSE) --profile traffic down --volumes --remove-orphans

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache pipeline/_compiled pipeline/_compiled.*
