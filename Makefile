# The two commands the README names: `make run` (the stack) and `make test` (the suite, as CI runs it).
SHELL := /bin/bash
UV_VERSION := 0.13.9
VENV := .venv
PY := $(VENV)/bin/python
export UV_PYTHON_DOWNLOADS := never
export UV_LINK_MODE := copy
export SSL_CERT_FILE ?= /etc/ssl/certs/ca-certificates.crt

.PHONY: install os-deps tools run test lint unit integration clean

# Everything the stack and the tests need: the locked Python environment, Debian's nginx, Prometheus,
# the nginx exporter and docker-compose (apt, as root), and the linters for the deploy files.
install: $(VENV)/.installed os-deps tools

os-deps:
	./scripts/install_os_deps.sh

tools:
	./scripts/install_tools.sh

# uv installs the locked environment (uv.lock) with bytecode compiled (see [tool.uv] in pyproject.toml).
$(VENV)/.installed: pyproject.toml uv.lock
	@command -v uv >/dev/null || python3 -m pip install --quiet "uv==$(UV_VERSION)"
	uv sync --frozen --python python3.11
	@touch $@

run: install
	./scripts/run_stack.sh

lint: install
	$(VENV)/bin/ruff check app scripted_llm scripts tests gunicorn.conf.py
	$(VENV)/bin/ruff format --check app scripted_llm scripts tests gunicorn.conf.py
	$(VENV)/bin/mypy app scripted_llm

unit: install
	$(PY) -m pytest tests/unit

integration: install
	$(PY) -m pytest tests/integration

test: install lint
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .venv-tools var .pytest_cache .mypy_cache .ruff_cache
