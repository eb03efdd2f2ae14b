# The two commands that matter: `make run` and `make test`. Both build .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test demo lint bench check clean debian-packages chaos

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/extproc serve --config examples/

# Debian's redis-server (with TLS and Sentinel, which the integration suite starts), when
# missing: CI runs as root with the package registries reachable.
debian-packages:
	@command -v redis-server >/dev/null || { \
	  echo "installing Debian's redis-server for the test suite"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server; }

test: $(STAMP) debian-packages
	$(BIN)/ruff check extproc tests bench
	$(BIN)/hadolint Dockerfile
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/python -m bench.demo

# The long chaos run (10,000 requests through every fault), printing its figures.
chaos: $(STAMP) debian-packages
	$(BIN)/python -m tests.e2e.chaos --requests 10000

bench: $(STAMP)
	$(BIN)/python -m bench.load

check: $(STAMP)
	$(BIN)/extproc check examples/

lint: $(STAMP)
	$(BIN)/ruff check extproc tests bench
	$(BIN)/ruff format --check extproc tests bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
