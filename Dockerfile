# MetaGPT Agent Gateway image: gunicorn (gevent) serving app.wsgi:application on 0.0.0.0:8000.
# The same image runs the scripted LLM (`python -m scripted_llm`); see docker-compose.yml.
# Plain Dockerfile syntax (no RUN --mount), so the legacy builder behind docker-compose v1 builds it too.

# Both stages use the same base: the venv's interpreter is the base image's /usr/local/bin/python3.11.
FROM python:3.11-slim-bookworm AS builder

# uv pinned like the Makefile's UV_VERSION, so the image resolves uv.lock exactly as `make install` does.
ARG UV_VERSION=0.13.9
RUN pip install --no-cache-dir "uv==${UV_VERSION}"

# The venv lives where the final stage expects it; the base image's Python, never a downloaded one.
# No uv cache: every layer is built once, and a cache would only grow the layer.
ENV UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1

WORKDIR /app

# Dependencies first, from the lock alone: this layer is rebuilt only when the lock changes.
# The project itself is not installed into the venv; its code runs from /app (the working directory).
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project
# What the service never runs (issue 16): the packages' own test suites, and playwright's
# bundled Node.js driver (MetaGPT's browser tools, which would also need browsers the image does not have).
RUN find /opt/venv/lib/python3.11/site-packages -mindepth 2 -type d -name tests -prune -exec rm -rf {} + \
    && rm -rf /opt/venv/lib/python3.11/site-packages/playwright/driver

COPY gunicorn.conf.py ./
COPY app/ ./app/
COPY scripted_llm/ ./scripted_llm/
# The non-root user cannot write __pycache__ under /app, so compile now. Hash-based .pyc files stay
# valid whatever mtimes COPY gives the sources.
RUN python -m compileall -q --invalidation-mode checked-hash app scripted_llm gunicorn.conf.py
# The studio's static files (nginx serves them, not gunicorn): on Kubernetes an init container copies
# them from this image into nginx's volume (deploy/kubernetes/base); compose mounts ./studio instead.
COPY studio/ ./studio/


FROM python:3.11-slim-bookworm

# A fixed numeric user: `USER 10001:10001` needs no passwd lookup, and host volumes can be chowned to it.
# The data dir and the socket dir are created here, owned by that user, because a new named volume
# mounted on .../tutorials or /run/metagpt-gateway copies the ownership of the image's directory.
# useradd -l: no lastlog/faillog entry, which for a high UID would be a large sparse file.
RUN groupadd --system --gid 10001 gateway \
    && useradd --system -l --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin gateway \
    && install -d -o 10001 -g 10001 -m 0755 /var/lib/metagpt-gateway /var/lib/metagpt-gateway/tutorials \
        /run/metagpt-gateway

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app /app
WORKDIR /app

# GATEWAY_BIND: gunicorn.conf.py binds loopback by default; in a container it must listen on all addresses.
# PROMETHEUS_MULTIPROC_DIR: /metrics sums every worker's files there (gunicorn.conf.py empties it at
# start); it sits in the container's own layer, not in a volume, since it means nothing after a restart.
# PYTHONDONTWRITEBYTECODE: the code is compiled at build time, and 10001 cannot write under /app anyway.
ENV GATEWAY_BIND=0.0.0.0:8000 \
    GATEWAY_DATA_DIR=/var/lib/metagpt-gateway \
    PROMETHEUS_MULTIPROC_DIR=/var/lib/metagpt-gateway/prometheus-multiproc \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

USER 10001:10001
EXPOSE 8000

# Liveness of the gateway, with what the image already has (no curl); the port follows GATEWAY_BIND.
# urlopen raises on anything but 2xx, and the exception makes the exit status non-zero.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('GATEWAY_BIND', ':8000').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]

# gunicorn is PID 1 and handles SIGTERM itself: running streams get GATEWAY_GRACEFUL_TIMEOUT to finish.
CMD ["gunicorn", "-c", "gunicorn.conf.py", "app.wsgi:application"]
