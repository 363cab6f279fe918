#!/bin/sh
# Ray Serve's HAProxy ingress, with every listener on one interface (127.0.0.1 by default).
#
# Ray 2.60 writes HAProxy's Prometheus (`bind :9101`) and stats (`bind *:8404`) listeners for all
# interfaces and offers no setting for it (the HTTP frontend follows http_options.host). Ray runs this script as its HAProxy binary
# (RAY_SERVE_HAPROXY_BINARY_PATH): it rewrites those binds in the config Ray just wrote, then
# becomes the real HAProxy (same pid, same arguments), on every start and graceful reload.
set -eu
config=""
previous=""
for arg in "$@"; do
    if [ "$previous" = "-f" ]; then config="$arg"; fi
    previous="$arg"
done
if [ -n "$config" ] && [ -f "$config" ]; then
    host="${RAYLOOP_HAPROXY_BIND_HOST:-127.0.0.1}"
    sed -i -E "s/^([[:space:]]*)bind[[:space:]]+\*?:([0-9]+)/\1bind ${host}:\2/" "$config"
fi
exec "${RAYLOOP_HAPROXY_BINARY:?RAYLOOP_HAPROXY_BINARY names the real haproxy}" "$@"
