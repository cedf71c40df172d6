# The two commands the README names: `make run` (the stack) and `make test` (the suite, as CI runs it).
SHELL := /bin/bash
UV_VERSION := 0.13.9
VENV := .venv
PY := $(VENV)/bin/python
export UV_PYTHON_DOWNLOADS := never
export UV_LINK_MODE := copy
export SSL_CERT_FILE ?= /etc/ssl/certs/ca-certificates.crt

.PHONY: install os-deps tools node-clients run test lint unit integration bench bench-smoke clean

# Everything the stack and the tests need: the locked Python environment, Debian's nginx, Prometheus,
# the nginx exporter, docker-compose, the Docker engine, mmdebstrap and Chromium with its driver (apt, as
# root), and the linters for the deploy files, and the Node clients of the Responses API tests.
install: $(VENV)/.installed os-deps tools node-clients

os-deps:
	./scripts/install_os_deps.sh

tools:
	./scripts/install_tools.sh

NODE_CLIENTS := tests/clients/node
node-clients: $(NODE_CLIENTS)/node_modules/.installed

# The openai and Vercel AI SDK packages exactly as locked (npm ci); the stamp skips it until the lock changes.
$(NODE_CLIENTS)/node_modules/.installed: $(NODE_CLIENTS)/package-lock.json
	npm ci --prefix $(NODE_CLIENTS) --no-audit --no-fund
	@touch $@

# uv installs the locked environment (uv.lock) with bytecode compiled (see [tool.uv] in pyproject.toml).
$(VENV)/.installed: pyproject.toml uv.lock
	@command -v uv >/dev/null || python3 -m pip install --quiet "uv==$(UV_VERSION)"
	uv sync --frozen --python python3.11
	@touch $@

run: install
	./scripts/run_stack.sh

lint: install
	$(VENV)/bin/ruff check app scripted_llm scripts bench tests gunicorn.conf.py
	$(VENV)/bin/ruff format --check app scripted_llm scripts bench tests gunicorn.conf.py
	$(VENV)/bin/mypy app scripted_llm bench

unit: install
	$(PY) -m pytest tests/unit

integration: install
	$(PY) -m pytest tests/integration

test: install lint
	$(PY) -m pytest

# The benchmark (bench/run.py): the whole stack under 50 to 1000 streams next to an nginx-only floor,
# ~10 minutes; writes bench/out/<timestamp>/results.{json,md,png} and prints where.
bench: install
	$(PY) -m bench.run

# The same, tiny (levels 5 and 10, 4 s each; well under a minute): proves the benchmark still works.
bench-smoke: install
	$(PY) -m bench.run --smoke

clean:
	rm -rf $(VENV) .venv-tools $(NODE_CLIENTS)/node_modules var .pytest_cache .mypy_cache .ruff_cache
