# Two commands do all set-up on a fresh Debian machine: `make up` and `make test`.
# Everything else here is a convenience for the people who work on the platform.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STACK ?= prod
OUT ?= build/render/$(STACK)
# checkov pins packages that conflict with pulumi's, so it lives in its own environment.
CHECKOV_VENV := .tools/checkov

.PHONY: test plan lint checkov-env venv constraints clean system-packages up down status bench \
	backup restore

venv: $(VENV)/.installed

# The virtual environment, rebuilt whenever pyproject.toml or constraints.txt changes: the
# versions in constraints.txt, so a venv made today and one made in a year are the same.
$(VENV)/.installed: pyproject.toml constraints.txt
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
		echo "python3-venv is missing: installing it with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[infra,test,bench]'
	@touch $@

# Re-resolve constraints.txt from pyproject.toml's ranges, in a scratch environment (an upgrade
# on purpose: run `make test` before committing the new file).
constraints:
	rm -rf build/constraints-venv && $(PYTHON) -m venv build/constraints-venv
	build/constraints-venv/bin/python -m pip install -q --upgrade pip
	build/constraints-venv/bin/python -m pip install -q -e '.[infra,test,bench]'
	{ head -3 constraints.txt; build/constraints-venv/bin/python -m pip freeze --exclude-editable; } > constraints.new
	mv constraints.new constraints.txt && rm -rf build/constraints-venv

checkov-env: $(CHECKOV_VENV)/.installed

$(CHECKOV_VENV)/.installed:
	@test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install -q --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install -q 'checkov>=3.2,<4'
	@touch $@

# PostgreSQL 15, PgPool-II, Redis, Memcached and HAProxy from Debian, for the local platform
# and the tests that run it: installed with apt-get when missing (as root), else one message.
system-packages:
	@$(PYTHON) -m stacks.local.system

test: venv checkov-env system-packages
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	CHECKOV=$(CHECKOV_VENV)/bin/checkov $(PY) -m pytest

# The whole platform on this machine (stacks/local): runs in the foreground until Ctrl-C;
# `make up ARGS=--detach` returns once everything is ready, `make down` stops it, `make status`
# shows it. State lives in .local/ (git-ignored). `make up ARGS=--help` lists the options.
up: venv system-packages
	@$(PY) -m stacks.local up $(ARGS)

down: venv
	@$(PY) -m stacks.local down $(ARGS)

status: venv
	@$(PY) -m stacks.local status $(ARGS)

# Backups of the running platform (pgBackRest): `make backup ARGS='--type incr'`, and a
# point-in-time restore, `make restore ARGS='--target-time 2026-12-06T10:15:00Z'` (or --latest).
backup: venv
	@$(PY) -m stacks.local backup $(ARGS)

restore: venv
	@$(PY) -m stacks.local restore $(ARGS)

# Benchmarks (bench/run.py): the platform under wrk on this machine, bounded in time, 127.0.0.1
# only; report in build/bench/. ARGS for bench.run, e.g. ARGS='--duration 15' or --use-running.
bench: venv system-packages
	$(PY) -m bench.run $(ARGS)

# Offline render of a stack under Pulumi's mock runtime (what `pulumi preview` would create)
# and the policy pack's verdict on it.
plan: venv
	$(PY) -m infra.render --stack $(STACK) --out $(OUT) --policy

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

clean:
	rm -rf build .pytest_cache .ruff_cache
