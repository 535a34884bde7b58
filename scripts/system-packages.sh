#!/usr/bin/env bash
# Install the Debian packages some tests need, only where their command is missing.
#
#   bash scripts/system-packages.sh chromium:chromium chromedriver:chromium-driver
#
# Each argument is COMMAND:PACKAGE: PACKAGE is installed with apt-get when COMMAND is not
# on the PATH. Idempotent and silent when every command is already there; otherwise runs
# `apt-get update` once, then one `apt-get install` for everything missing, as root or
# through sudo.
set -euo pipefail

usage() {
    echo "usage: $0 COMMAND:PACKAGE [COMMAND:PACKAGE ...]" >&2
    exit 2
}

[[ $# -gt 0 ]] || usage

missing=()
for pair in "$@"; do
    cmd=${pair%%:*}
    pkg=${pair#*:}
    if [[ $pair != *:* || -z $cmd || -z $pkg || $pkg == *:* ]]; then
        echo "$0: bad argument '$pair': expected COMMAND:PACKAGE" >&2
        usage
    fi
    if ! command -v "$cmd" >/dev/null 2>&1; then
        case " ${missing[*]-} " in
            *" $pkg "*) ;;
            *) missing+=("$pkg") ;;
        esac
    fi
done

[[ ${#missing[@]} -eq 0 ]] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "$0: missing system packages: ${missing[*]}; apt-get is not available here," \
        "install them with your system's package manager" >&2
    exit 1
fi

if [[ $(id -u) -eq 0 ]]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
else
    echo "$0: missing system packages: ${missing[*]}; installing them needs root and" \
        "sudo is not available: run as root: apt-get install ${missing[*]}" >&2
    exit 1
fi

echo "installing system packages: ${missing[*]}"
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"

for pair in "$@"; do
    cmd=${pair%%:*}
    if ! command -v "$cmd" >/dev/null 2>&1; then
        echo "$0: '$cmd' is still missing after installing ${pair#*:}" >&2
        exit 1
    fi
done
