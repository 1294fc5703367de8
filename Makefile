# CodeVector: `make run` (demo on http://127.0.0.1:8000/admin/) and `make test` (PostgreSQL + SQLite).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
PORT ?= 8000
MOCK_PORT ?= 8001
WORKERS ?= 1

export USAGE_BUFFER_DIR ?= $(CURDIR)/var/usage-buffer
# A local SECRET_KEY, made once and kept in var/ (git-ignored) like the admin password; an
# environment's own SECRET_KEY wins. Without one the web server refuses to start.
SECRET_KEY_FILE := var/secret-key.txt
WITH_KEY = SECRET_KEY="$${SECRET_KEY:-$$(cat $(SECRET_KEY_FILE))}"

.PHONY: install browser test-tools run test bench bench-tools bench-gateway bench-dashboard migrate clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

install: $(VENV)/.installed node_modules/.installed

$(SECRET_KEY_FILE):
	@mkdir -p -m 700 var
	@(umask 077 && $(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(50))' > $@)

migrate: install $(SECRET_KEY_FILE)
	@mkdir -p -m 700 var $(USAGE_BUFFER_DIR)
	$(WITH_KEY) $(PY) manage.py migrate --no-input -v0

# Web (gunicorn + uvicorn worker), the django-q2 worker and the mock upstream; Ctrl-C stops all.
run: migrate
	$(WITH_KEY) $(PY) manage.py collectstatic --no-input -v0
	$(WITH_KEY) $(PY) manage.py setup_local --mock-url http://127.0.0.1:$(MOCK_PORT) --url http://127.0.0.1:$(PORT)
	@export $(WITH_KEY); trap 'kill 0' INT TERM EXIT; \
	export EMAIL_BACKEND=$${EMAIL_BACKEND:-django.core.mail.backends.console.EmailBackend}; \
	$(PY) manage.py mock_upstream --port $(MOCK_PORT) & \
	$(PY) manage.py qcluster & \
	$(BIN)/gunicorn codevector.asgi:application -k uvicorn_worker.UvicornWorker \
	  --bind 127.0.0.1:$(PORT) --workers $(WORKERS) --graceful-timeout 30 & \
	wait

# The browser tests drive Debian's Chromium: the one on PATH, else installed here as root; never a
# browser download by a test tool (only package registries are reachable where this runs).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "Installing Chromium for the browser tests (apt-get install chromium)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "Chromium is missing for the browser tests: run 'sudo apt-get update && sudo apt-get install -y chromium', then make test again." >&2; \
	    exit 1; \
	  fi; }

# The deploy tests start Debian's nginx (deploy/nginx.conf) and tinyproxy in front of the gateway:
# the ones installed, else installed here as root. Installing must not start them as system
# services (nginx's would take port 80): a policy-rc.d refusing every start is in place during the
# install (the system's own if it has one, else ours, removed after).
test-tools:
	@missing=""; \
	command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	command -v tinyproxy >/dev/null 2>&1 || [ -x /usr/bin/tinyproxy ] || [ -x /usr/sbin/tinyproxy ] || missing="$$missing tinyproxy"; \
	[ -z "$$missing" ] || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "Installing$$missing for the deploy tests (apt-get install$$missing; their services are not started)"; \
	    policy=/usr/sbin/policy-rc.d; \
	    if [ ! -e $$policy ]; then \
	      trap "rm -f $$policy" EXIT; printf '#!/bin/sh\nexit 101\n' > $$policy; chmod 755 $$policy; \
	    fi; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq$$missing >/dev/null; \
	  else \
	    echo "Missing for the deploy tests:$$missing. Run 'sudo apt-get update && sudo apt-get install -y$$missing', then make test again." >&2; \
	    exit 1; \
	  fi; }

test: install browser test-tools
	tests/run.sh

# The mutation check (tests/mutate.py, not part of make test): each deliberate break of a guarantee,
# applied alone to a scratch copy of the tree, must fail the tests named for it. PostgreSQL from
# MUTATE_DATABASE_URL, else 127.0.0.1:5432; MUTATE_ARGS passes options (-k budget, --list, --keep).
.PHONY: mutate
mutate: $(VENV)/.installed
	$(PY) tests/mutate.py $(MUTATE_ARGS)

# The gateway bench drives wrk (Debian's package) and profiles with py-spy (PyPI) when asked.
bench-tools: install
	@command -v wrk >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; \
	  else echo "wrk is missing for bench/gateway.py: run 'sudo apt-get install -y wrk'." >&2; exit 1; fi; }
	@$(BIN)/pip install -q py-spy

bench: install
	$(PY) bench/ledger.py

bench-gateway: bench-tools $(SECRET_KEY_FILE)
	$(WITH_KEY) $(PY) bench/gateway.py

bench-dashboard: install $(SECRET_KEY_FILE)
	$(WITH_KEY) $(PY) bench/dashboard.py

clean:
	rm -rf $(VENV) node_modules var staticfiles
