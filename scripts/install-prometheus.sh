#!/usr/bin/env bash
# Prometheus's two binaries for the tests: promtool checks configs/prometheus and the dashboard's
# queries (tests/unit/test_observability.py), and a real server scrapes a test cluster
# (tests/integration/test_monitor.py). They come from Debian's `prometheus` package, unpacked under
# .venv/tools/prometheus: nothing is installed system-wide and no service is started. Nothing is
# done when both are already on PATH or unpacked. `make test` and .ci/run call this.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${PROMETHEUS_TOOLS_DIR:-.venv/tools/prometheus}"

if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
    exit 0
fi
if [ -x "$dest/usr/bin/promtool" ] && [ -x "$dest/usr/bin/prometheus" ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
    echo "scripts/install-prometheus.sh: promtool and prometheus are not on PATH and this machine has no" \
        "apt-get/dpkg-deb to fetch Debian's package; install Prometheus (both binaries) and put them on PATH" >&2
    exit 1
fi

echo "installing Debian's prometheus package into $dest (promtool and the server, which the observability tests run)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
download() { (cd "$work" && apt-get download -qq prometheus >/dev/null 2>&1); }
if ! download; then
    # no package lists yet (a fresh machine): refresh them, which needs root or password-less sudo
    sudo=""
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo="sudo -n"
        else
            echo "scripts/install-prometheus.sh: apt-get download failed and refreshing the package lists" \
                "needs root or password-less sudo (run 'apt-get update' once, then again)" >&2
            exit 1
        fi
    fi
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    download || { echo "scripts/install-prometheus.sh: apt-get download prometheus failed" >&2; exit 1; }
fi
mkdir -p "$dest"
dpkg-deb -x "$work"/prometheus_*.deb "$dest"
"$dest/usr/bin/promtool" --version 2>&1 | sed -n 1p
