# Two commands on a fresh machine with only python3 and make: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test lint unit integration bench bench-provider bench-strategies bench-media bench-http bench-scale bench-chaos bench-cluster screenshots serve clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m showrunner demo

# Two lanes at once. The unit tier needs no Ray and takes half a minute of CPU; the Ray tiers
# (the multi-node cluster, the one-node tier, then the commands, each starting a Ray of its own)
# mostly wait, on latency and start-ups, so the unit tier runs beside them: the suite takes as
# long as the Ray lane. (Ray tiers at once are not faster: Ray start-ups take the two cores, and
# timing-bound tests meet each other's load.) The unit lane's output follows the Ray lane's.
# BESIDE: tests that need no shared Ray, moved from the Ray lane to the unit lane, which is
# otherwise done in under a minute: command tests that only wait on their own processes and
# assert no timing, the coordinator's tests in one process over loopback (no Ray), and the
# bundled server's and the cache's, which need no Ray either.
BESIDE := tests/commands/test_cli_storage.py tests/commands/test_cli_store_commands.py \
	tests/commands/test_documented_commands.py tests/integration/test_coordinator.py \
	tests/integration/test_cache_and_budgets.py tests/integration/test_local_server.py \
	tests/integration/test_local_server_options.py tests/integration/test_answer_download_http.py
test: $(STAMP) lint
	@lane=$$(mktemp); \
	$(PY) -m pytest tests/unit tests/browser $(BESIDE) > $$lane 2>&1 & unit=$$!; \
	trap 'kill $$unit 2>/dev/null; rm -f $$lane' EXIT; \
	$(PY) -m pytest tests/cluster tests/integration tests/commands $(addprefix --ignore=,$(BESIDE)); ray=$$?; \
	wait $$unit; units=$$?; cat $$lane; \
	exit $$(( ray || units ))

# Style, then the layers: the import contracts in pyproject.toml.
lint: $(STAMP)
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports --no-logo

unit: $(STAMP)
	$(PY) -m pytest tests/unit

integration: $(STAMP)
	$(PY) -m pytest tests/integration tests/commands

# The studio's pictures in docs/ (studio.png, studio-open.png), taken by the page's tests;
# docs/timeline.png is `make demo`'s out/report.html.
screenshots: $(STAMP)
	SAVE_SCREENSHOTS=1 $(PY) -m pytest -q tests/commands/test_studio_open.py \
	    tests/integration/test_serve_app.py -k "studio or report_page"

bench-provider: $(STAMP)
	$(PY) -m bench.provider

bench-strategies: $(STAMP)
	$(PY) -m bench.strategies

bench-media: $(STAMP)
	$(PY) -m bench.strategies --media

bench-http: $(STAMP)
	$(PY) -m bench.http

bench-scale: $(STAMP)
	$(PY) -m bench.scale

bench-chaos: $(STAMP)
	$(PY) -m bench.chaos

bench-cluster: $(STAMP)
	$(PY) -m bench.cluster

bench: bench-provider bench-strategies bench-media bench-http

serve: $(STAMP)
	$(PY) -m showrunner serve

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache *.egg-info
