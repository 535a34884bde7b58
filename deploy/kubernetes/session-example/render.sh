#!/usr/bin/env bash
# Prints the session example for another session id, ready for `kubectl apply -f -`:
#   deploy/kubernetes/session-example/render.sh bob | kubectl apply -f -
# The id becomes part of DNS names (nb-<id>), so: lowercase letters, digits and '-'.
# siesta must know the session too: declare it under `sessions:` in siesta.yaml, or
#   kubectl -n siesta exec deploy/siesta -- siesta sessions create bob -t notebook-k8s -c /etc/siesta/siesta.yaml
set -euo pipefail
session="${1:?usage: render.sh SESSION_ID}"
if ! [[ "$session" =~ ^[a-z0-9]([a-z0-9-]{0,56}[a-z0-9])?$ ]]; then
  echo "render.sh: '$session' must be lowercase letters, digits and '-' (DNS label)" >&2
  exit 2
fi
sed -e "s/\balice\b/${session}/g" "$(dirname "$0")/nb-alice.yaml"
