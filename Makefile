# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DURATION ?= 60
RATE ?= 200

.PHONY: install tools demo test test-unit bench bench-peak bench-micro bench-instructions bench-scaling bench-peers chaos lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

# promtool and the Prometheus server for the alert-rule and scrape tests (Debian's package).
tools:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || { \
	  command -v apt-get >/dev/null || { echo "install Prometheus (promtool, prometheus) for the tests"; exit 1; }; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }

# The embedded broker (Tansu) and Redis, a worker, a gate, a platform simulator, live output.
demo: install
	$(VENV)/bin/clearance demo --duration $(DURATION) --rate $(RATE)

# Unit tests, then integration tests on the real embedded broker and Redis (started by the tests).
test: install tools
	$(PY) -m pytest -q

test-unit: install
	$(PY) -m pytest -q tests/unit

# One worker on the embedded broker, open loop: saturation, sustainable rate, steps at
# 25/50/75/90/100 %; a table, and JSON, histograms, summary.md and plots in benchmarks/results/bench-*/.
# Options: make bench ARGS="--configs batch100-json --repeat 3" (python -m benchmarks.throughput --help).
bench: install
	$(PY) -m benchmarks.throughput $(ARGS)

# The national peak (5,668 documents/s, 1,417 declarations/s) for three minutes on one worker.
bench-peak: install
	$(PY) -m benchmarks.throughput --scenario national-peak --configs batch100-json --drain-seconds 600 $(ARGS)

# Micro-benchmarks of the per-document processors (no broker); compare runs with
# make bench-micro ARGS=--benchmark-compare
bench-micro: install
	$(PY) -m pytest -q benchmarks/micro --benchmark-enable --benchmark-only --benchmark-autosave $(ARGS)

# Instructions per document under valgrind (worker pipeline, Redis's side, script calls):
# exact where CPU time drifts, for comparing two versions of the hot path.
# Options: make bench-instructions ARGS="--parts decode,worker --format xml"
bench-instructions: install
	@command -v valgrind >/dev/null || { \
	  command -v apt-get >/dev/null || { echo "install valgrind"; exit 1; }; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends valgrind; }
	$(PY) -m benchmarks.instructions $(ARGS)

# Throughput against worker processes (N = 1, 2 here; benchmarks/scaling.sh runs 1, 2, 4, 8).
bench-scaling: install
	$(PY) -m benchmarks.scaling $(ARGS)

# The same matching job in the project, Quix Streams and a bare confluent-kafka loop.
bench-peers: install
	$(PY) -m pip install -q -e '.[peers]'
	$(PY) -m benchmarks.peers.run

# Fault injection under load (worker kill -9, Redis stall/restart with and without data,
# broker stall), then the books; a table in benchmarks/results/chaos-*.md.
chaos: install
	$(PY) -m benchmarks.chaos

lint: install
	$(PY) -m pip install -q "ruff==0.17.6"
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .clearance *.egg-info .pytest_cache
