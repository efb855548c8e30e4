# sipagent developer entry points. `make demo` and `make test` are the README's quick start.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo serve test check lint bench clean

# The virtualenv is rebuilt when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/sipagent demo

serve: setup
	$(BIN)/sipagent serve

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Unit tests on both cores, then the wire tests four at a time: they spend most of their
# time waiting on real-time audio, and each module's tests stay on one worker in file order
# (--dist loadscope), sharing the module's agent as they do in a serial run.
test: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 tests/unit
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 4 --dist loadscope tests/wire

# What to run while working: lint, types and every test that places no real call.
check: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit

bench: setup
	$(BIN)/python scripts/bench/turn_latency.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
