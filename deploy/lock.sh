#!/usr/bin/env bash
# Regenerates the hash-pinned lock files the Dockerfile installs with --require-hashes:
#   deploy/requirements.txt        siesta's runtime dependencies ([project] dependencies)
#   deploy/build-requirements.txt  the build backend (hatchling) that builds siesta's wheel
# Run it after changing [project] dependencies in pyproject.toml; commit both files.
# pip-tools runs from a throwaway venv so it never touches the project's own.
set -euo pipefail
cd "$(dirname "$0")/.."
tools="$(mktemp -d)"
trap 'rm -rf "$tools"' EXIT
python3 -m venv "$tools"
"$tools/bin/pip" install -q 'pip-tools>=7.4,<8'
export CUSTOM_COMPILE_COMMAND="bash deploy/lock.sh"
flags=(--generate-hashes --strip-extras --allow-unsafe --no-emit-index-url
       --no-emit-find-links --upgrade -q)
"$tools/bin/pip-compile" "${flags[@]}" -o deploy/requirements.txt pyproject.toml
"$tools/bin/pip-compile" "${flags[@]}" -o deploy/build-requirements.txt \
  deploy/build-requirements.in
