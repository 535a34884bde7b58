#!/usr/bin/env bash
# Prints the session example for another session id, ready for `kubectl apply -f -`:
#   deploy/kubernetes/session-example/render.sh bob | kubectl apply -f -
# The id becomes part of Kubernetes names: nb-<id> (Deployment, Service, ScaledObject,
# Secret) and keda-hpa-nb-<id> (the HorizontalPodAutoscaler KEDA makes), which must be
# DNS labels of at most 63 characters. So: lowercase letters, digits and '-', at most 51.
# siesta must know the session too: declare it under `sessions:` in siesta.yaml, or
#   kubectl -n siesta exec deploy/siesta -- siesta sessions create bob -t notebook-k8s -c /etc/siesta/siesta.yaml
set -euo pipefail
session="${1:?usage: render.sh SESSION_ID}"
longest="keda-hpa-nb-${session}"
if ! [[ "$session" =~ ^[a-z0-9]([a-z0-9-]*[a-z0-9])?$ ]]; then
  echo "render.sh: '$session' must be lowercase letters, digits and '-' (DNS label)" >&2
  exit 2
fi
if (( ${#longest} > 63 )); then
  echo "render.sh: '$session' is too long: '$longest' (the HPA KEDA makes) would be ${#longest} characters, over Kubernetes' 63; use at most 51" >&2
  exit 2
fi
sed -e "s/\balice\b/${session}/g" "$(dirname "$0")/nb-alice.yaml"
