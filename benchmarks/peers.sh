#!/usr/bin/env bash
# Installs the peers the generator benchmark compares against, all outside the repository:
#   wrk and nginx from apt; wrk2 (constant-rate wrk, HdrHistogram latencies) built from source
#   into $PEERS_DIR.  wrk2 has no Debian package, so its source is taken from $WRK2_SRC (a
#   checkout or a git directory) or cloned from GitHub when the network allows it.
# Prints the path of each peer, one "name=path" line each, for bench_generator.py.
set -euo pipefail

PEERS_DIR=${PEERS_DIR:-/tmp/loadgate-peers}
WRK2_SRC=${WRK2_SRC:-/tmp/wrk2-src}
WRK2_REPO=${WRK2_REPO:-https://github.com/giltene/wrk2.git}
mkdir -p "$PEERS_DIR"

need_apt=()
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || need_apt+=(nginx-light)
command -v taskset >/dev/null 2>&1 || need_apt+=(util-linux)
if [ ${#need_apt[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    # wrk2's build needs a compiler, make, OpenSSL headers and zlib.
    $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" \
        build-essential libssl-dev zlib1g-dev git >/dev/null
fi

build_wrk2() {
    local src=$1
    # The bundled LuaJIT predates current compilers' defaults; a serial build is the reliable one.
    make -C "$src" -s >"$PEERS_DIR/wrk2-build.log" 2>&1 || {
        echo "wrk2: build failed, see $PEERS_DIR/wrk2-build.log" >&2
        return 1
    }
    cp "$src/wrk" "$PEERS_DIR/wrk2"
}

if [ ! -x "$PEERS_DIR/wrk2" ]; then
    if [ -d "$WRK2_SRC/.git" ] || [ -f "$WRK2_SRC/HEAD" ]; then
        # A bare git directory (as a mirror gives) is exported into a work tree first.
        if [ -f "$WRK2_SRC/HEAD" ] && [ ! -f "$WRK2_SRC/Makefile" ]; then
            rm -rf "$PEERS_DIR/wrk2-src"
            mkdir -p "$PEERS_DIR/wrk2-src"
            git --git-dir="$WRK2_SRC" archive HEAD | tar -x -C "$PEERS_DIR/wrk2-src"
            WRK2_SRC="$PEERS_DIR/wrk2-src"
        fi
    elif [ ! -f "$WRK2_SRC/Makefile" ]; then
        git clone -q --depth 1 "$WRK2_REPO" "$WRK2_SRC" || echo "wrk2: cannot clone $WRK2_REPO" >&2
    fi
    if [ -f "$WRK2_SRC/Makefile" ]; then
        build_wrk2 "$WRK2_SRC" || true
    fi
fi

echo "wrk=$(command -v wrk || true)"
echo "nginx=$(command -v nginx || echo /usr/sbin/nginx)"
if [ -x "$PEERS_DIR/wrk2" ]; then
    echo "wrk2=$PEERS_DIR/wrk2"
else
    echo "wrk2="
    echo "wrk2: not available; the CPU comparison will be skipped" >&2
fi
