# recstream developer commands. Every target that runs code bootstraps first (idempotent, ~1 s when
# nothing is missing): apt packages, .venv, pip install -e ".[dev,bench]", Kafka jars.

VENV       ?= .venv
PY         := $(VENV)/bin/python
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: bootstrap demo test lint audit bench clean

bootstrap:
	@VENV=$(VENV) bash infra/bootstrap.sh

## demo: start Kafka + Redis, run the end-to-end demo
demo:
	@VENV=$(VENV) RECSTREAM_BOOTSTRAP_DEMO=1 bash infra/bootstrap.sh
	$(VENV)/bin/recstream demo

## test: the whole suite (unit, doctests, integration against a private Kafka + Redis)
test: bootstrap
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 0 ]; then echo "make test: PASSED (all tests green)"; \
	else echo "make test: FAILED (pytest exit code $$rc; see the summary above)"; fi; exit $$rc

## lint: ruff + mypy
lint: bootstrap
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

## audit: pip-audit over the installed packages; fails on a known vulnerability AND on any package it could
## not check (--strict): it needs PyPI's per-version JSON API or api.osv.dev (docs/operations.md)
audit: bootstrap
	@$(PY) -m pip install -q pip-audit
	$(VENV)/bin/pip-audit --strict --progress-spinner off --path $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

## bench: every benchmark, one report (bench/results/all.md); BENCH_ARGS="--size quick" for a short run
bench: bootstrap
	$(VENV)/bin/recstream bench all $(BENCH_ARGS)

## clean: caches and build artefacts (keeps .venv, the jar cache and data homes)
clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist bench/results/*.tmp
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
