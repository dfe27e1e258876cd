#!/usr/bin/env bash
# Where `marathon serve` spends its time under load, sampled by perf: kernel
# and user space together, which callgrind (instructions.sh) cannot show.
# Uses the cpu-clock software event, so it works on virtual machines
# without a hardware PMU.
#
#   bash bench/profile.sh                          # target/release/marathon, c64, 8 s
#   CONC=1 SECONDS_=8 bash bench/profile.sh path/to/marathon
#   CALLS=1 bash bench/profile.sh                  # DWARF call graphs (bigger file, 3 s)
#   OUT=/tmp/m.data bash bench/profile.sh          # keep perf.data there (else a temp dir)
#
# One nginx origin (the same as proxy.sh), one API-key account, wrk with
# post.lua; the profile covers the marathon process only. Prints the share
# of kernel / marathon / libc and the top user-space symbols.
set -euo pipefail
BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH")
CONC=${CONC:-64}
SECONDS_=${SECONDS_:-8}
CALLS=${CALLS:-0}
KEY_SUFFIX=${KEY_SUFFIX--0123456789abcdefghijklmnopqrstuvwxyzABCDEFGH}
bin=${1:-${CARGO_TARGET_DIR:-$ROOT/target}/release/marathon}
[ -x "$bin" ] || { echo "bench: $bin is not an executable (cargo build --release -p marathon)" >&2; exit 1; }

missing=()
command -v perf >/dev/null 2>&1 || missing+=(linux-perf)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

w=$(mktemp -d)
pids=()
cleanup() {
    kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$w"
}
trap cleanup EXIT
OUT=${OUT:-$w/perf.data}

read -r po pm < <(python3 -c 'import socket;ss=[socket.socket() for _ in range(2)];[s.bind(("127.0.0.1",0)) for s in ss];print(*[s.getsockname()[1] for s in ss])')
sed "s/@ORIGIN_PORT@/$po/g; s#@DIR@#$w#g" "$BENCH/origin.conf.in" >"$w/origin.conf"
"$NGINX" -p "$w" -e "$w/origin.err" -c "$w/origin.conf" &
pids+=($!)
export MARATHON_HOME=$w/home
mkdir -p "$MARATHON_HOME"
printf '[server]\nlisten = "127.0.0.1:%s"\n[providers.openai]\nupstream = "http://127.0.0.1:%s"\n' "$pm" "$po" >"$MARATHON_HOME/config.toml"
printf %s "sk-bench-origin$KEY_SUFFIX" | "$bin" auth add openai --label bench >/dev/null
MARATHON_LOG=warn "$bin" serve 2>"$w/serve.log" &
mp=$!
pids+=("$mp")
for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$pm/_marathon/health" && break
    sleep 0.1
done
url="http://127.0.0.1:$pm/openai/v1/chat/completions"
threads=$((CONC < 2 ? 1 : 2))
wrk -t"$threads" -c"$CONC" -d2s -s "$BENCH/post.lua" "$url" >/dev/null # warm-up

graph=(-g)
if [ "$CALLS" = 1 ]; then
    graph=(--call-graph dwarf,32768)
    SECONDS_=3
fi
perf record -F 4999 -e cpu-clock "${graph[@]}" -p "$mp" -o "$OUT" -- sleep "$SECONDS_" >/dev/null 2>&1 &
pp=$!
wrk -t"$threads" -c"$CONC" -d"$((SECONDS_ + 1))s" -s "$BENCH/post.lua" "$url" | grep -E "requests in|Non-2xx" >&2
wait "$pp" || true

echo "## $bin at c$CONC: share of the marathon process's samples"
perf report -i "$OUT" --no-children --sort dso -g none 2>/dev/null | grep -E '^ +[0-9]' | head -6
echo "## top user-space symbols"
perf report -i "$OUT" --no-children --sort dso,sym -g none 2>/dev/null | grep -E '^ +[0-9]' |
    grep -v kernel.kallsyms | head -30 | cut -c1-150
[ "$OUT" = "$w/perf.data" ] || echo "perf data: $OUT (perf report -i $OUT)"
