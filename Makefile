# The two commands a user needs: `make demo` and `make test`. Each builds .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Two cores: one OpenMP/numba thread per core, never more (oversubscription is 10-30x slower).
export OMP_NUM_THREADS ?= 2
export MKL_NUM_THREADS ?= 2
export NUMBA_NUM_THREADS ?= 2
# Idle OpenMP threads sleep instead of spinning: torch and numba share two cores.
export OMP_WAIT_POLICY ?= PASSIVE
export MPLBACKEND ?= Agg

.PHONY: demo test lint bench experiments clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: the local CPU wheel; plain `torch` would pull gigabytes of CUDA packages.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev,h5]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/probgraphics demo --out demo-output

test: $(VENV)/.installed
	$(VENV)/bin/ruff check probgraphics tests benchmarks
	$(PY) -m pytest -q tests

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check probgraphics tests benchmarks

bench: $(VENV)/.installed
	$(PY) benchmarks/render.py

# The papers' experiments (benchmarks/experiments/), each writing NAME.md/.png/.json into
# benchmarks/results/; SIZE=tiny|quick|full (quick: minutes each on a CPU).
SIZE ?= quick
EXPERIMENTS := seed001_factors seed000_summaries seed000_invariance seed000_verification \
	seed002_volume seed004_muvae
experiments: $(VENV)/.installed
	for name in $(EXPERIMENTS); do \
		$(PY) benchmarks/experiments/$$name.py --size $(SIZE) || exit 1; \
	done

clean:
	rm -rf $(VENV) demo-output .pytest_cache
