# The two commands that matter: `make run` and `make test`. Both build .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test demo lint bench bench-compare bench-stream check protos clean debian-packages bench-packages chaos

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	@echo "extproc: serving the examples' budgets (spend in memory): gRPC 127.0.0.1:50051, admin http://127.0.0.1:9090"
	@echo "next, in another shell:"
	@echo "  $(BIN)/envoy -c envoy/envoy-local.yaml    # Envoy on 127.0.0.1:10000 in front of api.openai.com"
	@echo "  curl -s localhost:10000/budget-demo/v1/chat/completions -H \"authorization: Bearer \$$OPENAI_API_KEY\" \\"
	@echo "    -H 'content-type: application/json' -d '{\"model\": \"gpt-4o-mini\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}'"
	@echo "  $(BIN)/extproc spend --sidecar http://127.0.0.1:9090"
	$(BIN)/extproc serve --config examples/

# Debian's redis-server (with TLS and Sentinel, which the integration suite starts), promtool
# (the alert rules' tests) and chromium (the spend page's), when missing: CI runs as root
# with the package registries reachable.
debian-packages:
	@command -v redis-server >/dev/null || { \
	  echo "installing Debian's redis-server for the test suite"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server; }
	@command -v promtool >/dev/null || { \
	  echo "installing Debian's prometheus (for promtool) for the test suite"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus; }
	@command -v chromium >/dev/null || { \
	  echo "installing Debian's chromium (the spend page's headless-browser test) for the test suite"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; }

test: $(STAMP) debian-packages
	$(BIN)/ruff check extproc tests bench
	$(BIN)/hadolint Dockerfile
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/python -m bench.demo

# The long chaos run (10,000 requests through every fault), printing its figures.
chaos: $(STAMP) debian-packages
	$(BIN)/python -m tests.e2e.chaos --requests 10000

# wrk, for the side-by-side benchmark (Debian's package), when missing.
bench-packages:
	@command -v wrk >/dev/null || { \
	  echo "installing Debian's wrk for the benchmarks"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends wrk; }

# Side by side in one run: plain Envoy, the no-op floor, the sidecar in memory and with
# Redis (ratios to the floor), with one and two sidecar workers; streamed responses (per
# chunk, against the floor); then through a mock upstream, the untouched route included.
bench: bench-compare bench-stream
	$(BIN)/python -m bench.load

bench-compare: $(STAMP) debian-packages bench-packages
	$(BIN)/python -m bench.compare
	$(BIN)/python -m bench.compare --workers 2 --connections 16

bench-stream: $(STAMP) debian-packages
	$(BIN)/python -m bench.stream_compare

# The BudgetAdmin stubs from protos/ (committed; a test says when they are stale).
protos: $(STAMP)
	$(BIN)/python protos/generate.py

check: $(STAMP)
	$(BIN)/extproc check examples/

lint: $(STAMP)
	$(BIN)/ruff check extproc tests bench
	$(BIN)/ruff format --check extproc tests bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
