# hexbook: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.hexbook-installed
LOCK   := requirements/lock.txt
EXTRAS := dev,sim,load

.PHONY: help install browser redis-tls wrk postgresql test lint types deps advisories unit bench soak demo docs-images lock clean

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "hexbook needs Python 3.11+ (set PYTHON=python3.11)"'
	$(PYTHON) -m venv $(VENV)

# Every package at the version CI tested (requirements/lock.txt, a pip constraints file).
$(STAMP): $(BIN)/python pyproject.toml $(LOCK)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e '.[$(EXTRAS)]'
	@$(MAKE) --no-print-directory browser redis-tls
	touch $(STAMP)

# $(call apt_get,package,what it is for,how to get it without root): install a Debian
# package when run as root (apt-get update only when the first try fails), else say how.
define apt_get
if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian's $(1) for $(2)"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(1) >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(1) >/dev/null; }; \
	else \
	  echo "note: Debian's $(1) is missing (for $(2)): $(3)"; \
	fi
endef

install: $(STAMP) ## create .venv and install hexbook with its extras, as pinned in requirements/lock.txt

browser: ## Debian's chromium for the browser tests (apt-get, when missing and run as root)
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  $(call apt_get,chromium,the browser tests,sudo apt-get install chromium (or set HEXBOOK_CHROMIUM)); }

redis-tls: ## Debian's redis-server, built with TLS, for the rediss:// test (apt-get, when missing and run as root)
	@{ command -v redis-server >/dev/null 2>&1 && redis-server --version | grep -q 'v=[67]'; } || [ -n "$$HEXBOOK_REDIS_SERVER" ] || { \
	  $(call apt_get,redis-server,the rediss:// test: a redis-server built with TLS,sudo apt-get install redis-server (or set HEXBOOK_REDIS_SERVER)); }

wrk: ## Debian's wrk, the benchmarks' load generator (apt-get, when missing and run as root)
	@command -v wrk >/dev/null 2>&1 || { \
	  $(call apt_get,wrk,the HTTP benchmarks,sudo apt-get install wrk); }

postgresql: ## Debian's PostgreSQL, the bench's FastAPI + PostgreSQL peer (apt-get, when missing and run as root)
	@test -x /usr/lib/postgresql/15/bin/initdb || { \
	  $(call apt_get,postgresql,the bench's PostgreSQL peer,sudo apt-get install postgresql); }

lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: $(STAMP) ## mypy (strict) on the packages
	$(BIN)/mypy

deps: $(STAMP) ## audit the pinned dependencies for known vulnerabilities (docs/security.md)
	$(BIN)/python .ci/dependency_audit.py check $(LOCK)

advisories: $(STAMP) ## remake the advisory snapshot: make advisories DB=<clone of pypa/advisory-database>
	@test -n "$(DB)" || { echo "give DB=<a clone of https://github.com/pypa/advisory-database>"; exit 2; }
	$(BIN)/python .ci/dependency_audit.py build --from $(DB)

unit: $(STAMP) ## the tests only
	$(BIN)/pytest

test: lint types deps unit ## lint, types, the dependency audit and the whole test suite (what CI runs)

bench: $(STAMP) wrk postgresql ## benchmarks: print figures and ratios measured in one run
	$(BIN)/python tests/bench/run.py

soak: $(STAMP) ## 90 days on an accelerated clock, the OpenAPI fuzz for every role, 200,000 stateful steps (~30 min)
	$(BIN)/python tests/soak/run.py
	HEXBOOK_FUZZ_ROLES=anonymous,booking-client,provider-admin,operator HEXBOOK_FUZZ_EXAMPLES=100 \
	  HEXBOOK_FUZZ_PHASES=examples,coverage,fuzzing,stateful $(BIN)/pytest tests/gateway/test_openapi_fuzz.py
	HEXBOOK_STATEFUL_EXAMPLES=8000 HEXBOOK_STATEFUL_MIN_STEPS=200000 \
	  $(BIN)/pytest tests/engine/test_calendar_stateful.py

docs-images: $(STAMP) ## remake the docs' images: the simulators' (docs/img/sim-*.png) and the pages' screenshots (docs/img/pages/, by the browser tests), ~3 min
	$(BIN)/python docs/make_images.py
	HEXBOOK_DOCS_IMAGES=1 $(BIN)/pytest -q tests/gateway/test_pages_browser.py

demo: $(STAMP) ## start hexbook with a demo city (Ctrl-C stops it; ./data keeps bookings)
	$(BIN)/hexbook up --demo

lock: ## pin requirements/lock.txt anew from a fresh venv (after changing pyproject.toml)
	rm -rf .lockvenv && $(PYTHON) -m venv .lockvenv
	.lockvenv/bin/python -m pip install --quiet --upgrade pip
	.lockvenv/bin/python -m pip install --quiet -e '.[$(EXTRAS)]'
	{ echo "# What CI tested: make install takes every package at this version (pip -c)."; \
	  echo "# Made by 'make lock' from a fresh venv; change pyproject.toml, then run it."; \
	  .lockvenv/bin/python -m pip freeze --exclude-editable | grep -v '^hexbook'; } > $(LOCK)
	rm -rf .lockvenv

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
