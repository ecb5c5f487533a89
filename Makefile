# pgcelery developer commands. Everything installs from the lockfile (uv.lock).
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.8
UV := .tools/bin/uv
VENV := .venv
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON := $(PYTHON)

.PHONY: install run test lint typecheck bench soak chaos celery-suite docs dist pipcheck audit lock clean

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.installed: uv.lock pyproject.toml | $(UV)
	$(UV) sync --frozen --all-extras --group dev
	touch $@

install: $(VENV)/.installed  ## create .venv from the lockfile

run: install  ## run a worker (embedded PostgreSQL when DATABASE_URL is unset)
	$(VENV)/bin/pgcelery worker

test: install  ## run the test suite against a real PostgreSQL
	$(VENV)/bin/pytest $(PYTEST_ARGS)

LINT_PATHS := $(wildcard backend tests bench)

lint: install
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/lint-imports

typecheck: install
	$(VENV)/bin/mypy --strict

pipcheck: install  ## the installed dependencies agree with each other
	$(VENV)/bin/python -m pip --version >/dev/null 2>&1 || $(VENV)/bin/python -m ensurepip --quiet
	$(VENV)/bin/python -m pip check

audit: pipcheck  ## pip check, and pip-audit of the locked dependencies (needs PyPI's JSON API)
	$(UV) export --frozen --all-extras --group dev --no-emit-project > .tools/requirements.txt
	$(VENV)/bin/pip-audit --strict --disable-pip -r .tools/requirements.txt

bench: install  ## pgcelery vs stock kombu sqla vs Redis vs RabbitMQ, side by side (BENCH_ROUNDS=2: medians of 2)
	$(VENV)/bin/python -m bench

soak: install  ## 20,000 tasks through the Procfile worker, RSS sampled (not in `make test`)
	$(VENV)/bin/python -m bench.soak $(SOAK_ARGS)

chaos: install  ## faults under load: killed workers, dropped backends, restarts (not in `make test`)
	$(VENV)/bin/python -m bench.chaos $(CHAOS_ARGS)

celery-suite: install  ## Celery's own t/integration/test_tasks.py on pgcelery (needs PyPI; not in `make test`)
	$(VENV)/bin/python -m bench.celery_suite $(CELERY_SUITE_ARGS)

docs: install  ## build the documentation site; any warning fails the build
	$(VENV)/bin/mkdocs build --strict --site-dir .tools/site

dist: | $(UV)  ## build the wheel and the sdist into dist/ (git-ignored): pip install dist/*.whl
	rm -rf dist
	$(UV) build --out-dir dist
	@ls -1 dist

lock: | $(UV)
	$(UV) lock

clean:
	rm -rf $(VENV) .tools dist .pytest_cache .mypy_cache .ruff_cache
