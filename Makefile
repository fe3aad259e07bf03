# tokenmill: `make demo` runs the main job end to end, `make test` runs the tests.
# Both build the virtual environment from scratch when it is missing (pinned by constraints.txt).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED ?= $(abspath ../shared)
export TOKENMILL_SHARED ?= $(SHARED)
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1

.PHONY: venv demo test system-deps up bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[local,train,k8s,filters-datatrove,dev]"
	touch $@

venv: $(VENV)/.installed

# System packages the tests need (Slurm + munge for the Slurm backend); idempotent.
system-deps:
	bash infra/slurm/install.sh

demo: venv
	$(VENV)/bin/tokenmill demo

test: venv system-deps
	$(PY) -m pytest -q -n 2 --dist loadgroup

up: venv
	$(VENV)/bin/tokenmill up

bench: venv
	$(PY) bench/readers.py
	$(PY) bench/filters.py
	$(PY) bench/dedup.py
	$(PY) bench/flow.py
	$(PY) bench/train.py

clean:
	rm -rf $(VENV) .pytest_cache
