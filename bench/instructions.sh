#!/usr/bin/env bash
# Instructions marathon spends per proxied request, counted by callgrind:
# deterministic, so a change's cost shows on a shared, noisy machine where
# wall-clock ratios move by 30% between runs. See bench/README.md.
#
#   bash bench/instructions.sh                      # target/release/marathon
#   bash bench/instructions.sh path/to/marathon …   # several binaries, one line each
#   N=5000 PROFILE=1 bash bench/instructions.sh     # PROFILE=1: top functions too
#   KEEP=/tmp/cg bash bench/instructions.sh          # keep the callgrind file(s) there
#
# One connection sends N requests (non-streamed chat completions, the same
# body as bench/proxy.sh) to `marathon serve` in front of an nginx origin; the
# count covers the marathon process from after a warm-up to the last answer.
set -euo pipefail
BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH")
N=${N:-2000}
# As long as a real key, as in proxy.sh (KEY_SUFFIX= for the short key of sessions 1-6).
KEY_SUFFIX=${KEY_SUFFIX--0123456789abcdefghijklmnopqrstuvwxyzABCDEFGH}
PROFILE=${PROFILE:-0}
(($#)) || set -- "${CARGO_TARGET_DIR:-$ROOT/target}/release/marathon"

missing=()
command -v valgrind >/dev/null 2>&1 || missing+=(valgrind)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

count() { # binary
    local bin=$1 w po pm pids=()
    [ -x "$bin" ] || { echo "bench: $bin is not an executable (cargo build --release -p marathon)" >&2; return 1; }
    w=$(mktemp -d)
    read -r po pm < <(python3 -c 'import socket;ss=[socket.socket() for _ in range(2)];[s.bind(("127.0.0.1",0)) for s in ss];print(*[s.getsockname()[1] for s in ss])')
    sed "s/@ORIGIN_PORT@/$po/g; s#@DIR@#$w#g" "$BENCH/origin.conf.in" >"$w/origin.conf"
    "$NGINX" -p "$w" -e "$w/origin.err" -c "$w/origin.conf" &
    pids+=($!)
    export MARATHON_HOME=$w/home
    mkdir -p "$MARATHON_HOME"
    printf '[server]\nlisten = "127.0.0.1:%s"\n[providers.openai]\nupstream = "http://127.0.0.1:%s"\n' "$pm" "$po" >"$MARATHON_HOME/config.toml"
    printf %s "sk-bench-origin$KEY_SUFFIX" | "$bin" auth add openai --label bench >/dev/null
    MARATHON_LOG=warn valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$w/cg.out" \
        "$bin" serve 2>"$w/valgrind.log" &
    pids+=($!)
    local vg=$!
    for _ in $(seq 300); do
        curl -s -o /dev/null "http://127.0.0.1:$pm/_marathon/health" && break
        sleep 0.2
    done
    requests() { python3 "$BENCH/one_connection.py" "$pm" "$1"; }
    requests 300                                   # warm-up, not counted
    callgrind_control -i on "$vg" >/dev/null 2>&1
    requests 50
    callgrind_control -z "$vg" >/dev/null 2>&1         # counting starts here
    requests "$N"
    callgrind_control -d "$vg" >/dev/null 2>&1
    sleep 1
    kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    local f total
    f=$(ls -S "$w"/cg.out.* | head -1)
    total=$(callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ && !t {gsub(",", "", $1); print $1; t = 1}')
    printf '%s: %s instructions per request (%s over %s requests)\n' "$bin" "$((total / N))" "$total" "$N"
    if [ "$PROFILE" = 1 ]; then
        callgrind_annotate --inclusive=yes "$f" 2>/dev/null | grep -E 'marathon_' | head -25 | cut -c1-160
    fi
    if [ -n "${KEEP:-}" ]; then
        mkdir -p "$KEEP"
        cp "$f" "$KEEP/$(basename "$bin").cg"
    fi
    rm -rf "$w"
}

for bin in "$@"; do count "$bin"; done
