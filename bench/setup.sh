#!/usr/bin/env bash
# Installs what `make bench` needs besides the venv: nginx (Debian's nginx-light), HAProxy
# and wrk.
# Idempotent and quiet when both are already there. Uses sudo only when not root.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

if have nginx && have haproxy && have wrk; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
else
    echo "bench/setup.sh: nginx, haproxy and wrk are needed; install them as root:" >&2
    echo "    apt-get update && apt-get install -y nginx-light haproxy wrk" >&2
    exit 1
fi

echo "bench/setup.sh: installing nginx-light, haproxy and wrk from Debian"
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light haproxy wrk >/dev/null

have nginx && have haproxy && have wrk || {
    echo "bench/setup.sh: nginx, haproxy or wrk is still missing after the install" >&2
    exit 1
}
