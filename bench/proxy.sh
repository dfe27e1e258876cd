#!/usr/bin/env bash
# marathon's proxy benchmark: direct vs nginx (reference reverse proxy) vs
# marathon, in one run, repeats interleaved. See bench/README.md.
#
#   bash bench/proxy.sh                 # ~4 minutes; results in bench/out/results.md
#   ROUNDS=5 DURATION=8s bash bench/proxy.sh
#
# Installs nginx and wrk with apt-get when missing, builds marathon and
# marathon-sim in release mode, runs everything on 127.0.0.1 with free ports
# and a temporary directory, and stops what it started on exit.
set -euo pipefail

ROUNDS=${ROUNDS:-3}                     # interleaved rounds of direct/nginx/marathon
DURATION=${DURATION:-6s}                # per wrk run
WARMUP=${WARMUP:-2s}
STREAM_EVENTS=${STREAM_EVENTS:-2000}    # SSE text deltas per streamed answer
# The accounts' keys are as long as real ones (OpenAI's and Anthropic's are
# 51-164 bytes): what marathon does per byte of an answer to keep keys out
# of it depends on the shortest key it holds. KEY_SUFFIX= gives the 14-16
# byte keys of sessions 1-6.
KEY_SUFFIX=${KEY_SUFFIX--0123456789abcdefghijklmnopqrstuvwxyzABCDEFGH}
STREAM_REPEATS=${STREAM_REPEATS:-20}
FAILOVER_SECONDS=${FAILOVER_SECONDS:-20}
INFO_RUN=${INFO_RUN:-1}                 # one extra marathon run with request logging on
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-10000} # idle keep-alive connections for the memory measurement (0: skip)
KEEP=${KEEP:-0}                         # keep the temporary directory (logs, configs)
# NO_BUILD=1: use the release binaries already in target/ (e.g. while the tree does not build)
# VARIANTS=1: also measure marathon with one tokio worker thread (TOKIO_WORKER_THREADS=1) and
# with mimalloc preloaded (Debian's libmimalloc2.0), to see what those changes would buy.
VARIANTS=${VARIANTS:-0}
# OTHER_BIN=/path/to/marathon: also measure another marathon binary (another
# build or profile) in the same interleaved rounds, as `marathon-other`: an A/B
# of a change that noise between two runs would hide.
OTHER_BIN=${OTHER_BIN:-}
# WORKERS=0: skip the `serve --workers 2` row (a second marathon, two event loops on SO_REUSEPORT listeners).
WORKERS=${WORKERS:-1}
# REDIS=1 (default): also marathon on the Redis store backend (a local
# redis-server, appendonly yes, appendfsync everysec), to compare with the
# file backend: the "Store backends" table. REDIS=0 skips it.
REDIS=${REDIS:-1}

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH")
OUT=$BENCH/out
mkdir -p "$OUT"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- tools
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
[ "$REDIS" = 0 ] || command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if ((${#missing[@]})); then
    say "installing ${missing[*]} (apt-get)"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
MIMALLOC=/usr/lib/x86_64-linux-gnu/libmimalloc.so.2
if [ "$VARIANTS" = 1 ] && [ ! -e "$MIMALLOC" ]; then
    say "installing libmimalloc2.0 (apt-get) for VARIANTS=1"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq libmimalloc2.0 >/dev/null
fi

if [ "${NO_BUILD:-0}" = 1 ]; then
    say "NO_BUILD=1: using the release binaries already built"
else
    say "building marathon and marathon-sim (release)"
    (cd "$ROOT" && cargo build --release --quiet -p marathon -p marathon-sim)
fi
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
MARATHON=$TARGET_DIR/release/marathon
SIM=$TARGET_DIR/release/marathon-sim
[ -x "$MARATHON" ] && [ -x "$SIM" ] || die "release binaries not found under $TARGET_DIR/release"
# The floor for a hyper-based proxy (bench/passthrough, its own little workspace).
if [ "${NO_BUILD:-0}" != 1 ] || [ ! -x "$TARGET_DIR/release/bench-passthrough" ]; then
    say "building the minimal hyper pass-through"
    CARGO_TARGET_DIR=$TARGET_DIR cargo build --release --quiet --manifest-path "$BENCH/passthrough/Cargo.toml"
fi
PASSTHROUGH=$TARGET_DIR/release/bench-passthrough

# ---------------------------------------------------------------- descriptors
# The idle-connection measurement holds IDLE_CONNECTIONS sockets in the client
# and as many in each server (marathon sizes its connection cap from its
# limit). Raise the hard limit if we may (root), then the soft one to it.
want_fds=$((IDLE_CONNECTIONS * 3 + 4096))
if [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt "$want_fds" ]; then
    ulimit -Hn "$want_fds" 2>/dev/null || say "cannot raise the descriptor limit to $want_fds (not root?): the idle measurement may hit it"
fi
ulimit -Sn "$(ulimit -Hn)"

# ---------------------------------------------------------------- processes
WORK=$(mktemp -d -t marathon-bench.XXXXXX)
PIDS=()
cleanup() {
    local p
    if ((${#PIDS[@]})); then
        # TERM, not INT: a background job of a non-interactive shell ignores
        # SIGINT unless it installs its own handler (the pass-through does not).
        kill -TERM "${PIDS[@]}" 2>/dev/null || true
        # Whoever has not stopped within 5 s (nginx masters stop their workers) is killed.
        (sleep 5 && kill -KILL "${PIDS[@]}" 2>/dev/null) &
        local watchdog=$!
        for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
        kill "$watchdog" 2>/dev/null || true
        wait "$watchdog" 2>/dev/null || true
    fi
    if [ "$KEEP" = 1 ]; then
        echo "bench: kept $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Free ports, all held at once so they differ.
read -r P_ORIGIN P_NGINX P_SIMPROXY P_SIM P_MARATHON P_HYPER P_HYPERSIM P_M1 P_MMI P_IDLE P_MW2 P_REDIS P_MR P_MO < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(14)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')

wait_http() { # url: until it answers anything at all
    for _ in $(seq 1 100); do
        code=$(curl -s -o /dev/null -w '%{http_code}' "$1" || true)
        [ "$code" != "000" ] && return 0
        sleep 0.1
    done
    die "$1 did not come up"
}

render() { # template out
    sed -e "s|@DIR@|$WORK|g" -e "s|@ORIGIN_PORT@|$P_ORIGIN|g" -e "s|@PROXY_PORT@|$P_NGINX|g" \
        -e "s|@SIM_PORT@|$P_SIM|g" -e "s|@SIM_PROXY_PORT@|$P_SIMPROXY|g" -e "s|@IDLE_PORT@|$P_IDLE|g" "$1" >"$2"
}

cpu_ticks() { # pids...: utime+stime of each process (all its threads), summed
    local total=0 p t
    for p in "$@"; do
        t=$(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')
        total=$((total + t))
    done
    echo "$total"
}

status_kb() { # field pids...: a /proc/PID/status field (kB), summed
    local field=$1 total=0 p v
    shift
    for p in "$@"; do
        v=$(awk -v f="$field:" '$1 == f {print $2}' "/proc/$p/status")
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

say "starting origin, nginx proxy, marathon-sim (ports $P_ORIGIN $P_NGINX $P_SIM)"
render "$BENCH/origin.conf.in" "$WORK/origin.conf"
render "$BENCH/nginx-proxy.conf.in" "$WORK/nginx-proxy.conf"
"$NGINX" -p "$WORK" -e "$WORK/origin.err" -c "$WORK/origin.conf" &
ORIGIN_PID=$!
PIDS+=("$ORIGIN_PID")
"$NGINX" -p "$WORK" -e "$WORK/proxy.err" -c "$WORK/nginx-proxy.conf" &
NGINX_PID=$!
PIDS+=("$NGINX_PID")

sed "s/@STREAM_EVENTS@/$STREAM_EVENTS/; s/@KEY_SUFFIX@/$KEY_SUFFIX/" "$BENCH/sim.toml" >"$WORK/sim.toml"
"$SIM" --port "$P_SIM" --fast --quiet --scenario "$WORK/sim.toml" >"$WORK/sim.log" 2>&1 &
SIM_PID=$!
PIDS+=("$SIM_PID")

"$PASSTHROUGH" "$P_HYPER" "$P_ORIGIN" &
HYPER_PID=$!
PIDS+=("$HYPER_PID")
"$PASSTHROUGH" "$P_HYPERSIM" "$P_SIM" &
HYPERSIM_PID=$!
PIDS+=("$HYPERSIM_PID")

wait_http "http://127.0.0.1:$P_ORIGIN/"
wait_http "http://127.0.0.1:$P_NGINX/"
wait_http "http://127.0.0.1:$P_SIM/v1/models"
wait_http "http://127.0.0.1:$P_HYPER/"
wait_http "http://127.0.0.1:$P_HYPERSIM/v1/models"
# nginx with a master: the worker does the work; count both (the master idles).
ORIGIN_PIDS=("$ORIGIN_PID" $(pgrep -P "$ORIGIN_PID"))
NGINX_PIDS=("$NGINX_PID" $(pgrep -P "$NGINX_PID"))

# marathon: one home; providers for the origin, the streams and the failover.
export MARATHON_HOME=$WORK/home
mkdir -p "$MARATHON_HOME"
# The idle measurement holds IDLE_CONNECTIONS at once; "auto" sizes the cap
# from the descriptor limit, which a container may not let us raise.
export MARATHON_MAX_CONNECTIONS=$((IDLE_CONNECTIONS + 1024))
cat >"$MARATHON_HOME/config.toml" <<EOF
[server]
listen = "127.0.0.1:$P_MARATHON"

[providers.openai]
upstream = "http://127.0.0.1:$P_ORIGIN"

[providers.stream]
kind = "openai-compatible"
upstream = "http://127.0.0.1:$P_SIM"

[providers.short]
kind = "openai-compatible"
upstream = "http://127.0.0.1:$P_SIM"

# "limited" is preferred and answers 429 in 1 s windows (OpenAI reset headers),
# so every request after its cooldown ends fails over to "steady".
[providers.fail]
kind = "openai-compatible"
upstream = "http://127.0.0.1:$P_SIM"
strategy = "priority"
EOF
printf %s "sk-bench-origin$KEY_SUFFIX" | "$MARATHON" auth add openai --label bench >/dev/null
printf %s "sk-bench-stream$KEY_SUFFIX" | "$MARATHON" auth add stream --label streamer >/dev/null
printf %s "sk-bench-short$KEY_SUFFIX" | "$MARATHON" auth add short --label short >/dev/null
printf %s "sk-bench-limited$KEY_SUFFIX" | "$MARATHON" auth add fail --label limited --priority 0 >/dev/null
printf %s "sk-bench-steady$KEY_SUFFIX" | "$MARATHON" auth add fail --label steady --priority 1 >/dev/null

start_marathon() { # log-level logfile
    MARATHON_LOG=$1 "$MARATHON" serve 2>"$2" &
    MARATHON_PID=$!
    PIDS+=("$MARATHON_PID")
    wait_http "http://127.0.0.1:$P_MARATHON/_marathon/health"
}
stop_marathon() {
    kill -INT "$MARATHON_PID"
    wait "$MARATHON_PID" 2>/dev/null || true
    local keep=() p
    for p in "${PIDS[@]}"; do [ "$p" = "$MARATHON_PID" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

start_marathon warn "$WORK/marathon.log"
sleep 0.5
RSS_MARATHON_IDLE=$(status_kb VmRSS "$MARATHON_PID")
RSS_NGINX_IDLE=$(status_kb VmRSS "${NGINX_PIDS[@]}")
RSS_HYPER_IDLE=$(status_kb VmRSS "$HYPER_PID")

URL_DIRECT="http://127.0.0.1:$P_ORIGIN/v1/chat/completions"
URL_NGINX="http://127.0.0.1:$P_NGINX/v1/chat/completions"
URL_MARATHON="http://127.0.0.1:$P_MARATHON/openai/v1/chat/completions"
URL_HYPER="http://127.0.0.1:$P_HYPER/v1/chat/completions"

targets=(direct nginx hyper marathon)
if [ "$WORKERS" = 1 ]; then
    MARATHON_LOG=warn "$MARATHON" serve --workers 2 --listen "127.0.0.1:$P_MW2" 2>"$WORK/marathon-w2.log" &
    MW2_PID=$!
    PIDS+=("$MW2_PID")
    wait_http "http://127.0.0.1:$P_MW2/_marathon/health"
    targets+=(marathon-w2)
fi
if [ "$VARIANTS" = 1 ]; then
    TOKIO_WORKER_THREADS=1 MARATHON_LOG=warn "$MARATHON" serve --listen "127.0.0.1:$P_M1" 2>"$WORK/marathon-1thread.log" &
    M1_PID=$!
    PIDS+=("$M1_PID")
    LD_PRELOAD=$MIMALLOC MARATHON_LOG=warn "$MARATHON" serve --listen "127.0.0.1:$P_MMI" 2>"$WORK/marathon-mimalloc.log" &
    MMI_PID=$!
    PIDS+=("$MMI_PID")
    wait_http "http://127.0.0.1:$P_M1/_marathon/health"
    wait_http "http://127.0.0.1:$P_MMI/_marathon/health"
    targets+=(marathon-1thread marathon-mimalloc)
fi
if [ -n "$OTHER_BIN" ]; then
    [ -x "$OTHER_BIN" ] || die "OTHER_BIN=$OTHER_BIN is not an executable"
    MARATHON_LOG=warn "$OTHER_BIN" serve --listen "127.0.0.1:$P_MO" 2>"$WORK/marathon-other.log" &
    MO_PID=$!
    PIDS+=("$MO_PID")
    wait_http "http://127.0.0.1:$P_MO/_marathon/health"
    targets+=(marathon-other)
fi

if [ "$REDIS" = 1 ]; then
    # The same accounts and providers, on a Redis store: copied from the file
    # store, then a second marathon whose home says backend = "redis".
    mkdir -p "$WORK/redis" "$WORK/home-redis"
    redis-server --port "$P_REDIS" --bind 127.0.0.1 --dir "$WORK/redis" --appendonly yes \
        --appendfsync everysec --save "" --daemonize no >"$WORK/redis.log" 2>&1 &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    for _ in $(seq 100); do
        [ "$(redis-cli -p "$P_REDIS" ping 2>/dev/null)" = PONG ] && break
        sleep 0.05
    done
    "$MARATHON" store copy --to "redis://127.0.0.1:$P_REDIS/0" >/dev/null
    sed "s/^listen = .*/listen = \"127.0.0.1:$P_MR\"/" "$MARATHON_HOME/config.toml" >"$WORK/home-redis/config.toml"
    printf '\n[store]\nbackend = "redis"\nurl = "redis://127.0.0.1:%s/0"\n' "$P_REDIS" >>"$WORK/home-redis/config.toml"
    MARATHON_HOME=$WORK/home-redis MARATHON_LOG=warn "$MARATHON" serve 2>"$WORK/marathon-redis.log" &
    MR_PID=$!
    PIDS+=("$MR_PID")
    wait_http "http://127.0.0.1:$P_MR/_marathon/health"
    targets+=(marathon-redis)
fi

# A sanity check: marathon answers 200 from the origin and says which account.
hdrs=$(curl -s -D - -o /dev/null -H 'content-type: application/json' -H 'authorization: Bearer sk-bench-client' \
    -d '{"model":"m","messages":[]}' "$URL_MARATHON")
grep -q '^HTTP/1.1 200' <<<"$hdrs" || die "marathon did not answer 200: $hdrs"
grep -qi '^x-marathon-account: bench' <<<"$hdrs" || die "no x-marathon-account header: $hdrs"

RAW=$WORK/raw.jsonl
: >"$RAW"

url_of() {
    case $1 in
        direct) echo "$URL_DIRECT" ;;
        nginx) echo "$URL_NGINX" ;;
        hyper) echo "$URL_HYPER" ;;
        marathon) echo "$URL_MARATHON" ;;
        marathon-w2) echo "http://127.0.0.1:$P_MW2/openai/v1/chat/completions" ;;
        marathon-1thread) echo "http://127.0.0.1:$P_M1/openai/v1/chat/completions" ;;
        marathon-mimalloc) echo "http://127.0.0.1:$P_MMI/openai/v1/chat/completions" ;;
        marathon-redis) echo "http://127.0.0.1:$P_MR/openai/v1/chat/completions" ;;
        marathon-other) echo "http://127.0.0.1:$P_MO/openai/v1/chat/completions" ;;
    esac
}
pids_of() {
    case $1 in
        direct) echo "${ORIGIN_PIDS[*]}" ;;
        nginx) echo "${NGINX_PIDS[*]}" ;;
        hyper) echo "$HYPER_PID" ;;
        marathon) echo "$MARATHON_PID" ;;
        marathon-w2) echo "$MW2_PID" ;;
        marathon-1thread) echo "$M1_PID" ;;
        marathon-mimalloc) echo "$MMI_PID" ;;
        marathon-redis) echo "$MR_PID" ;;
        marathon-other) echo "$MO_PID" ;;
    esac
}
wrk_args() { if [ "$1" = 1 ]; then echo "-t1 -c1"; else echo "-t2 -c64"; fi; }

machine_ticks() { # "busy idle": the whole machine's CPU ticks so far (/proc/stat)
    awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6}' /proc/stat
}

run_wrk() { # target conc round log
    local target=$1 conc=$2 round=$3 log=$4 pids before after sampler json mbefore mafter
    read -r -a pids <<<"$(pids_of "$target")"
    before=$(cpu_ticks "${pids[@]}")
    mbefore=$(machine_ticks)
    # Sample RSS while the load runs (VmHWM only gives the lifetime peak).
    (
        max=0
        while :; do
            v=$(status_kb VmRSS "${pids[@]}" 2>/dev/null || echo 0)
            ((v > max)) && max=$v && echo "$max" >"$WORK/rss.max"
            sleep 0.2
        done
    ) &
    sampler=$!
    # shellcheck disable=SC2046
    wrk $(wrk_args "$conc") -d "$DURATION" --timeout 5s --latency -s "$BENCH/post.lua" "$(url_of "$target")" \
        >"$WORK/wrk.out" 2>&1 || die "wrk failed: $(cat "$WORK/wrk.out")"
    after=$(cpu_ticks "${pids[@]}")
    mafter=$(machine_ticks)
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    json=$(sed -n 's/^WRKJSON //p' "$WORK/wrk.out")
    [ -n "$json" ] || die "no result from wrk: $(cat "$WORK/wrk.out")"
    # The machine's idle share during the run: whether a core was left for
    # --workers 2 to use (wrk, the origin and marathon share the machine).
    read -r mb_busy mb_idle <<<"$mbefore"
    read -r ma_busy ma_idle <<<"$mafter"
    printf '{"kind":"wrk","target":"%s","conc":%s,"round":%s,"log":"%s","cpu_ticks":%s,"rss_max_kb":%s,"machine_busy_ticks":%s,"machine_idle_ticks":%s,"cpus":%s,"wrk":%s}\n' \
        "$target" "$conc" "$round" "$log" "$((after - before))" "$(cat "$WORK/rss.max" 2>/dev/null || echo null)" \
        "$((ma_busy - mb_busy))" "$((ma_idle - mb_idle))" "$(nproc)" "$json" >>"$RAW"
    rm -f "$WORK/rss.max"
    printf '   %-8s c%-2s round %s: %s\n' "$target" "$conc" "$round" "$json" >&2
}

warm() { # target
    # shellcheck disable=SC2046
    wrk -t2 -c64 -d "$WARMUP" -s "$BENCH/post.lua" "$(url_of "$1")" >/dev/null 2>&1
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
say "load average: $LOAD_BEFORE ($(nproc) CPUs)"
say "warm-up"
for t in "${targets[@]}"; do warm "$t"; done
sleep 1
RSS_MARATHON_WARM=$(status_kb VmRSS "$MARATHON_PID")
RSS_NGINX_WARM=$(status_kb VmRSS "${NGINX_PIDS[@]}")
RSS_HYPER_WARM=$(status_kb VmRSS "$HYPER_PID")

for round in $(seq 1 "$ROUNDS"); do
    say "round $round of $ROUNDS"
    for conc in 1 64; do
        # Rotate the order each round so no target always runs first.
        for i in "${!targets[@]}"; do
            run_wrk "${targets[$(((i + round - 1) % ${#targets[@]}))]}" "$conc" "$round" warn
        done
    done
done
RSS_MARATHON_HWM=$(status_kb VmHWM "$MARATHON_PID")
RSS_NGINX_HWM=$(status_kb VmHWM "${NGINX_PIDS[@]}")
RSS_HYPER_HWM=$(status_kb VmHWM "$HYPER_PID")

say "streams: first byte on a short stream, then $STREAM_EVENTS events, $STREAM_REPEATS requests per target"
stream_pids=(--pid "direct=$SIM_PID" --pid "nginx=$(IFS=,; echo "${NGINX_PIDS[*]}")" --pid "hyper=$HYPERSIM_PID" --pid "marathon=$MARATHON_PID")
python3 "$BENCH/measure.py" stream --kind first-byte --key "sk-bench-short$KEY_SUFFIX" --repeats "$((STREAM_REPEATS * 5))" "${stream_pids[@]}" \
    --target "direct=http://127.0.0.1:$P_SIM/v1/chat/completions" \
    --target "nginx=http://127.0.0.1:$P_SIMPROXY/v1/chat/completions" \
    --target "hyper=http://127.0.0.1:$P_HYPERSIM/v1/chat/completions" \
    --target "marathon=http://127.0.0.1:$P_MARATHON/short/v1/chat/completions" >>"$RAW"
python3 "$BENCH/measure.py" stream --kind stream --key "sk-bench-stream$KEY_SUFFIX" --repeats "$STREAM_REPEATS" "${stream_pids[@]}" \
    --target "direct=http://127.0.0.1:$P_SIM/v1/chat/completions" \
    --target "nginx=http://127.0.0.1:$P_SIMPROXY/v1/chat/completions" \
    --target "hyper=http://127.0.0.1:$P_HYPERSIM/v1/chat/completions" \
    --target "marathon=http://127.0.0.1:$P_MARATHON/stream/v1/chat/completions" >>"$RAW"

say "failover: ${FAILOVER_SECONDS}s of requests, the preferred account rate-limited in 1 s windows"
python3 "$BENCH/measure.py" failover --seconds "$FAILOVER_SECONDS" \
    --proxy "http://127.0.0.1:$P_MARATHON/fail/v1/chat/completions" \
    --direct "http://127.0.0.1:$P_SIM/v1/chat/completions" --direct-key "sk-bench-steady$KEY_SUFFIX" >>"$RAW"

if [ "$IDLE_CONNECTIONS" -gt 0 ]; then
    say "idle keep-alive connections: $IDLE_CONNECTIONS to nginx and to marathon, one request each, then quiet"
    render "$BENCH/nginx-idle.conf.in" "$WORK/nginx-idle.conf"
    "$NGINX" -p "$WORK" -e "$WORK/idle.err" -c "$WORK/nginx-idle.conf" &
    IDLE_PID=$!
    PIDS+=("$IDLE_PID")
    wait_http "http://127.0.0.1:$P_IDLE/"
    IDLE_PIDS=("$IDLE_PID" $(pgrep -P "$IDLE_PID"))
    python3 "$BENCH/measure.py" idle --name nginx --connections "$IDLE_CONNECTIONS" \
        --url "http://127.0.0.1:$P_IDLE/v1/chat/completions" --pid "$(IFS=,; echo "${IDLE_PIDS[*]}")" >>"$RAW"
    python3 "$BENCH/measure.py" idle --name marathon --connections "$IDLE_CONNECTIONS" \
        --url "$URL_MARATHON" --pid "$MARATHON_PID" >>"$RAW"
    tail -2 "$RAW" >&2
fi

if [ "$INFO_RUN" = 1 ]; then
    say "marathon with MARATHON_LOG=info (request log lines to a file), one run each"
    stop_marathon
    start_marathon info "$WORK/marathon-info.log"
    warm marathon
    run_wrk marathon 1 1 info
    run_wrk marathon 64 1 info
    lines=$(wc -l <"$WORK/marathon-info.log")
    say "   $lines log lines written"
fi
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

cat >"$WORK/meta.json" <<EOF
{"date": "$(date -u '+%Y-%m-%d %H:%M UTC')", "host": "$(uname -sr)", "cpus": $(nproc),
 "load_before": "$LOAD_BEFORE", "load_after": "$LOAD_AFTER", "duration": "$DURATION",
 "nginx": "$("$NGINX" -v 2>&1 | sed 's|.*/||')", "wrk": "$(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)",
 "marathon": "$(cd "$ROOT" && git describe --always --dirty 2>/dev/null || echo unknown)",
 "clk_tck": $(getconf CLK_TCK),
 "rss": {"marathon_idle": $RSS_MARATHON_IDLE, "marathon_warm": $RSS_MARATHON_WARM, "marathon_hwm": $RSS_MARATHON_HWM,
         "nginx_idle": $RSS_NGINX_IDLE, "nginx_warm": $RSS_NGINX_WARM, "nginx_hwm": $RSS_NGINX_HWM,
         "hyper_idle": $RSS_HYPER_IDLE, "hyper_warm": $RSS_HYPER_WARM, "hyper_hwm": $RSS_HYPER_HWM}}
EOF
cp "$RAW" "$OUT/raw.jsonl"
cp "$WORK/meta.json" "$OUT/meta.json"
echo
python3 "$BENCH/measure.py" report "$RAW" "$WORK/meta.json" --out "$OUT/results.md"
say "written to $OUT/results.md (raw records: $OUT/raw.jsonl)"
