# The two commands of the README:
#   make run   set up, then the generator and experiment 1 at the default size
#   make test  set up, then the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup run test bench compare clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

run: setup
	$(PY) lorenz96_bilstm_gru_sparse.py
	$(PY) da_bilstm_gru_1_sparse.py

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) benchmarks/bench.py

compare: setup
	$(PY) lorenz96_bilstm_gru_sparse.py
	$(PY) compare_methods.py

clean:
	rm -rf results lstm_data_sparse.npz .pytest_cache
