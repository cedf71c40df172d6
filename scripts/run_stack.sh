#!/usr/bin/env bash
# `make run`: the stack on loopback, from the same files compose uses. The scripted LLM (unless
# GATEWAY_LLM_BASE_URL names a real one), gunicorn with gunicorn.conf.py, and nginx with
# nginx/templates/gateway.conf.template rendered for loopback. Ctrl-C stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=$ROOT/.venv/bin/python

export GATEWAY_DATA_DIR=${GATEWAY_DATA_DIR:-$ROOT/var}
APP_PORT=${APP_PORT:-8000}
LLM_PORT=${LLM_PORT:-8081}
NGINX_PORT=${NGINX_PORT:-8080}
NGINX_STATUS_PORT=${NGINX_STATUS_PORT:-8089}
export GATEWAY_BIND=${GATEWAY_BIND:-127.0.0.1:$APP_PORT}
# nginx reaches gunicorn through a Unix socket, as in compose (a socket path must fit in 107 bytes;
# past that, nginx uses GATEWAY_BIND).
if [[ -z "${GATEWAY_UNIX_SOCKET+set}" && ${#GATEWAY_DATA_DIR} -lt 90 ]]; then
  export GATEWAY_UNIX_SOCKET=$GATEWAY_DATA_DIR/gunicorn.sock
fi
UPSTREAM=${GATEWAY_UNIX_SOCKET:+unix:$GATEWAY_UNIX_SOCKET}
UPSTREAM=${UPSTREAM:-$GATEWAY_BIND}
# Metrics across gunicorn workers; gunicorn.conf.py empties it at start.
export PROMETHEUS_MULTIPROC_DIR=${PROMETHEUS_MULTIPROC_DIR:-$GATEWAY_DATA_DIR/prometheus-multiproc}
mkdir -p "$GATEWAY_DATA_DIR/log"

pids=()
cleanup() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

wait_http() {  # url, name
  for _ in $(seq 1 300); do
    if "$PY" -c "import sys,httpx; sys.exit(httpx.get(sys.argv[1], timeout=1).status_code != 200)" "$1" 2>/dev/null; then
      return 0
    fi
    sleep 0.2
  done
  echo "$2 did not come up at $1" >&2
  exit 1
}

if [[ -z "${GATEWAY_LLM_BASE_URL:-}" ]]; then
  echo "No GATEWAY_LLM_BASE_URL: starting the SCRIPTED LLM on 127.0.0.1:$LLM_PORT (canned text, not a real model)."
  "$PY" -m scripted_llm --host 127.0.0.1 --port "$LLM_PORT" --pace "${SCRIPTED_LLM_PACE:-20}" &
  pids+=($!)
  export GATEWAY_LLM_BASE_URL=http://127.0.0.1:$LLM_PORT/v1
  wait_http "http://127.0.0.1:$LLM_PORT/healthz" "scripted LLM"
fi

"$PY" -m gunicorn -c gunicorn.conf.py app.wsgi:application &
pids+=($!)
wait_http "http://$GATEWAY_BIND/readyz" gateway

NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if [[ ! -x $NGINX ]]; then
  echo "nginx is not installed. Install it with: apt-get install -y --no-install-recommends nginx" >&2
  exit 1
fi
prefix=$GATEWAY_DATA_DIR/nginx
conf=$("$PY" -m scripts.nginx_local "$prefix" --listen "127.0.0.1:$NGINX_PORT" \
  --status-listen "127.0.0.1:$NGINX_STATUS_PORT" --upstream "$UPSTREAM" \
  --tutorials-dir "$GATEWAY_DATA_DIR/tutorials")
"$NGINX" -p "$prefix" -c "$conf" -e "$prefix/error.log" &
pids+=($!)
wait_http "http://127.0.0.1:$NGINX_PORT/healthz" nginx
PUBLIC=http://127.0.0.1:$NGINX_PORT

cat <<MSG

MetaGPT Agent Gateway is up.
  Studio:        $PUBLIC/   (order a tutorial from a browser; files from studio/)
  API (nginx):   $PUBLIC/v1   (model: write_tutorial)
  Downloads:     $PUBLIC/download/<name>   (served by nginx from $GATEWAY_DATA_DIR/tutorials)
  App (direct):  http://$GATEWAY_BIND   (metrics: http://$GATEWAY_BIND/metrics)
  nginx status:  http://127.0.0.1:$NGINX_STATUS_PORT/stub_status
  Upstream LLM:  $GATEWAY_LLM_BASE_URL
  Logs:          $GATEWAY_DATA_DIR/nginx/*.log, and gunicorn on this terminal
Try:
  curl -N $PUBLIC/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model":"write_tutorial","stream":true,"messages":[{"role":"user","content":"a tutorial about MySQL"}]}'
Ctrl-C stops everything.
MSG
wait -n "${pids[@]}"
