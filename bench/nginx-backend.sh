#!/usr/bin/env bash
# The benchmark's backend: one nginx worker answering "hello\n" on 127.0.0.1:PORT.
#
#   bash bench/nginx-backend.sh PORT DIR
#
# siesta runs it as a template command (`{port}` filled in at start time); bench/run.py
# also runs it directly to time nginx's own start. It writes an nginx config for PORT
# into DIR/backend-PORT/ and execs nginx in the foreground, so the process siesta
# starts (and signals) is the nginx master itself. Set BENCH_NGINX to pick the binary
# (not NGINX: nginx itself reads that variable, for inherited listening sockets).
set -euo pipefail

port="${1:?usage: nginx-backend.sh PORT DIR}"
dir="${2:?usage: nginx-backend.sh PORT DIR}"
nginx="${BENCH_NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}"
run="$dir/backend-$port"
mkdir -p "$run"

cat >"$run/nginx.conf" <<CONF
worker_processes 1;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $run/body;
    proxy_temp_path $run/proxy;
    fastcgi_temp_path $run/fastcgi;
    uwsgi_temp_path $run/uwsgi;
    scgi_temp_path $run/scgi;
    server {
        listen 127.0.0.1:$port;
        location / { return 200 "hello\n"; }
    }
}
CONF

exec "$nginx" -p "$run" -c "$run/nginx.conf" -e "$run/error.log" \
    -g "daemon off; pid $run/nginx.pid; error_log $run/error.log warn;"
