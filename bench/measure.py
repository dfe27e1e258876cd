#!/usr/bin/env python3
"""Measurement helpers for bench/proxy.sh (python3 standard library only).

  measure.py stream   --target NAME=URL ... [--pid NAME=PID,...] --key KEY --repeats N
      Streams a chat completion from each target in turn (interleaved) on a raw
      socket, and prints one JSON line per request: time to the first body
      byte, to the last byte, SSE events, CPU time of the target's processes.

  measure.py failover --proxy URL --direct URL --direct-key KEY --seconds S
      Sends requests back to back, alternately through marathon (to a provider
      whose preferred account is rate-limited in short windows) and straight to
      the simulator; prints one JSON line per failover and a summary.

  measure.py idle --name NAME --url URL --pid PID[,PID] --connections N [--settle S]
      Opens N keep-alive connections to URL, sends one request on each and
      reads its answer, leaves them all open and idle, waits S seconds, and
      prints the RSS the target's processes gained per connection.

  measure.py report RAW.jsonl META.json
      Turns the raw records into the Markdown results table.
"""

import argparse
import http.client
import json
import os
import re
import socket
import statistics
import sys
import time
import urllib.parse

STREAM_BODY = json.dumps(
    {
        "model": "gpt-4o-mini",
        "stream": True,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
    }
).encode()
PLAIN_BODY = json.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi."}]}
).encode()


class Target:
    """One keep-alive HTTP/1.1 connection to one URL."""

    def __init__(self, name, url, key):
        self.name = name
        u = urllib.parse.urlsplit(url)
        self.host, self.port, self.path = u.hostname, u.port, u.path
        self.key = key
        self.conn = None

    def post(self, body):
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        headers = {
            "Content-Type": "application/json",
            "Authorization": "Bearer " + self.key,
        }
        try:
            self.conn.request("POST", self.path, body, headers)
            return self.conn.getresponse()
        except (http.client.HTTPException, OSError):
            # A connection the server closed while idle: one fresh try.
            self.conn.close()
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
            self.conn.request("POST", self.path, body, headers)
            return self.conn.getresponse()


def task_cpu_ns(pids):
    """CPU time of every thread of these processes, in ns (schedstat)."""
    total = 0
    for pid in pids:
        base = f"/proc/{pid}/task"
        for tid in os.listdir(base):
            try:
                with open(f"{base}/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                pass  # a thread that just ended
    return total


class RawStream:
    """A streamed request on a raw keep-alive socket: the client does almost
    nothing per chunk (one recv of up to 1 MiB), so the times are the servers'."""

    def __init__(self, name, url, key, pids):
        self.name = name
        u = urllib.parse.urlsplit(url)
        self.addr = (u.hostname, u.port)
        self.request = (
            f"POST {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {key}\r\nContent-Length: {len(STREAM_BODY)}\r\n\r\n"
        ).encode() + STREAM_BODY
        self.pids = pids
        self.sock = None

    def connect(self):
        self.sock = socket.create_connection(self.addr, timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def once(self):
        """(first body byte s, last byte s, events, body bytes)."""
        if self.sock is None:
            self.connect()
        t0 = time.perf_counter()
        self.sock.sendall(self.request)
        buf = bytearray()
        head_end = -1
        chunked = False
        length = None
        first = None
        while True:
            data = self.sock.recv(1 << 20)
            now = time.perf_counter()
            if not data:
                raise SystemExit(f"{self.name}: connection closed mid-response")
            buf += data
            if head_end < 0:
                i = buf.find(b"\r\n\r\n")
                if i < 0:
                    continue
                head_end = i + 4
                head = bytes(buf[:i]).decode("latin-1").lower().split("\r\n")
                if not head[0].startswith("http/1.1 200"):
                    raise SystemExit(f"{self.name}: {bytes(buf[:400])!r}")
                for line in head[1:]:
                    k, _, v = line.partition(":")
                    if k == "transfer-encoding" and "chunked" in v:
                        chunked = True
                    elif k == "content-length":
                        length = int(v)
                    elif k == "connection" and "close" in v:
                        self.sock = None
            if first is None and len(buf) > head_end:
                first = now
            if chunked and (buf.endswith(b"\r\n0\r\n\r\n") or len(buf) == head_end + 5 and buf.endswith(b"0\r\n\r\n")):
                break
            if length is not None and len(buf) - head_end >= length:
                break
        body = bytes(buf[head_end:])
        return first - t0, now - t0, body.count(b"\n\n"), len(body)


def cmd_stream(args):
    pids = {}
    for spec in args.pid or []:
        name, ps = spec.split("=", 1)
        pids[name] = [int(p) for p in ps.split(",")]
    targets = []
    for spec in args.target:
        name, url = spec.split("=", 1)
        targets.append(RawStream(name, url, args.key, pids.get(name, [])))
    for t in targets:  # warm-up: connections, pools, caches
        for _ in range(3):
            t.once()
    for i in range(args.repeats):
        for t in targets:
            cpu0 = task_cpu_ns(t.pids) if t.pids else None
            first, last, events, size = t.once()
            cpu = task_cpu_ns(t.pids) - cpu0 if t.pids else None
            print(
                json.dumps(
                    {
                        "kind": args.kind,
                        "target": t.name,
                        "rep": i,
                        "first_us": first * 1e6,
                        "total_us": last * 1e6,
                        "events": events,
                        "bytes": size,
                        "cpu_ns": cpu,
                    }
                ),
                flush=True,
            )


def rss_kb(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def read_answer(sock):
    """Reads one HTTP/1.1 answer (content-length or chunked); returns its status."""
    buf = bytearray()
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise SystemExit(f"connection closed before an answer: {bytes(buf[:200])!r}")
        buf += data
    head_end = buf.index(b"\r\n\r\n") + 4
    head = bytes(buf[:head_end]).decode("latin-1").lower()
    status = int(head.split(" ", 2)[1])
    m = re.search(r"\r\ncontent-length: *(\d+)", head)
    if m:
        need = head_end + int(m.group(1))
        while len(buf) < need:
            buf += sock.recv(65536)
    elif "transfer-encoding: chunked" in head:
        while not buf.endswith(b"0\r\n\r\n"):
            buf += sock.recv(65536)
    return status


def cmd_idle(args):
    """Idle keep-alive connections: what each one costs the server in memory
    once it has served its request and gone quiet."""
    pids = [int(p) for p in args.pid.split(",")]
    u = urllib.parse.urlsplit(args.url)
    request = (
        f"POST {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer sk-bench-client\r\nContent-Length: {len(PLAIN_BODY)}\r\n\r\n"
    ).encode() + PLAIN_BODY
    # Warm: pools, caches and allocator arenas as after normal use.
    warm = socket.create_connection((u.hostname, u.port), timeout=30)
    for _ in range(50):
        warm.sendall(request)
        read_answer(warm)
    warm.close()
    time.sleep(args.settle)
    before = rss_kb(pids)
    socks, t0 = [], time.monotonic()
    for _ in range(args.connections):
        s = socket.create_connection((u.hostname, u.port), timeout=30)
        s.sendall(request)
        status = read_answer(s)
        if status != 200:
            raise SystemExit(f"{args.name}: answer {status}")
        socks.append(s)
    opened = time.monotonic() - t0
    time.sleep(args.settle)
    after = rss_kb(pids)
    open_now = 0
    for s in socks:
        s.setblocking(False)
        try:
            open_now += s.recv(1) != b""
        except BlockingIOError:
            open_now += 1
        except OSError:
            pass
    for s in socks:
        s.close()
    print(
        json.dumps(
            {
                "kind": "idle",
                "target": args.name,
                "connections": args.connections,
                "still_open": open_now,
                "open_seconds": opened,
                "rss_before_kb": before,
                "rss_after_kb": after,
                "kib_per_connection": (after - before) / args.connections,
            }
        ),
        flush=True,
    )


ATTEMPT = re.compile(r"\S+=(\d{3}|[a-z-]+)")


def timed_plain(t):
    t0 = time.perf_counter()
    resp = t.post(PLAIN_BODY)
    resp.read()
    dt = time.perf_counter() - t0
    return resp, dt


def cmd_failover(args):
    """Requests back to back (no sleeps: an idle pause makes the next request
    pay for waking parked threads, which would swamp the difference), one
    through marathon, one straight to the simulator, for `seconds`. Whenever
    the preferred account's cooldown has ended, the next request through
    marathon fails over; the others take one attempt."""
    proxy = Target("marathon", args.proxy, args.key)
    direct = Target("direct", args.direct, args.direct_key)
    for _ in range(20):
        timed_plain(direct)
        timed_plain(proxy)
    one, direct_us, odd = [], [], []
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        resp, dt = timed_plain(proxy)
        trace = resp.getheader("x-marathon-attempts", "")
        n = len(ATTEMPT.findall(trace))
        if resp.status == 200 and n == 1:
            one.append(dt * 1e6)
        elif resp.status == 200 and n == 2:
            recent = one[-50:]
            print(
                json.dumps(
                    {
                        "kind": "failover",
                        "us": dt * 1e6,
                        "baseline_us": statistics.median(recent) if recent else None,
                        "trace": trace,
                        "account": resp.getheader("x-marathon-account", ""),
                    }
                ),
                flush=True,
            )
        else:
            odd.append({"status": resp.status, "trace": trace})
        resp, dt = timed_plain(direct)
        if resp.status == 200:
            direct_us.append(dt * 1e6)
    print(
        json.dumps(
            {
                "kind": "failover-summary",
                "one_n": len(one),
                "one_median_us": statistics.median(one) if one else None,
                "direct_n": len(direct_us),
                "direct_median_us": statistics.median(direct_us) if direct_us else None,
                "odd": odd[:5],
                "odd_n": len(odd),
            }
        ),
        flush=True,
    )


# ---------------------------------------------------------------- report


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, unit="", digits=0):
    if x is None:
        return "–"
    if digits == 0:
        return f"{x:,.0f}{unit}"
    return f"{x:,.{digits}f}{unit}"


def ratio(a, b):
    if a is None or b is None or b <= 0:
        return None
    return a / b


def cmd_report(args):
    recs = [json.loads(line) for line in open(args.raw) if line.strip()]
    meta = json.load(open(args.meta))
    tick = meta["clk_tck"]
    wrk = [r for r in recs if r["kind"] == "wrk"]
    rounds = sorted({r["round"] for r in wrk})

    def runs(target, conc, log="warn"):
        return {
            r["round"]: r
            for r in wrk
            if r["target"] == target and r["conc"] == conc and r.get("log", "warn") == log
        }

    out = []
    w = out.append
    w("# marathon proxy benchmark\n")
    w(
        f"{meta['date']} · {meta['host']} · {meta['cpus']} CPUs · load average before: "
        f"{meta['load_before']} · after: {meta.get('load_after', '?')} · "
        f"{len(rounds)} interleaved rounds of {meta['duration']} per run · "
        f"nginx {meta['nginx']} · {meta['wrk']} · marathon {meta['marathon']}\n"
    )
    w(
        "Origin: nginx `return 200` with a chat.completion JSON (own process, 1 worker). "
        "Reference: nginx `proxy_pass` with upstream keepalive (own process, 1 worker). "
        "Hyper floor: bench/passthrough, a minimal hyper server + hyper-util pooled client (one current-thread tokio runtime, as marathon serve runs by default). "
        "marathon: `marathon serve`, one API-key account, MARATHON_LOG=warn. "
        "Load: wrk, POST with a JSON body; c1 = 1 thread/1 connection, c64 = 2 threads/64 connections. "
        "Medians over rounds; added latency is paired with the direct run of the same round.\n"
    )

    # ---- per-target summary
    summary = {}
    for target in ("direct", "nginx", "hyper", "marathon"):
        s = {}
        for conc in (1, 64):
            rr = runs(target, conc)
            direct = runs("direct", conc)
            if not rr:
                continue
            s[conc] = {
                "rps": med([r["wrk"]["requests"] / (r["wrk"]["duration_us"] / 1e6) for r in rr.values()]),
                "p50": med([r["wrk"]["p50_us"] for r in rr.values()]),
                "p99": med([r["wrk"]["p99_us"] for r in rr.values()]),
                "add50": med(
                    [r["wrk"]["p50_us"] - direct[k]["wrk"]["p50_us"] for k, r in rr.items() if k in direct]
                ),
                "add99": med(
                    [r["wrk"]["p99_us"] - direct[k]["wrk"]["p99_us"] for k, r in rr.items() if k in direct]
                ),
                "cpu": med(
                    [
                        r["cpu_ticks"] / tick / r["wrk"]["requests"] * 1e6
                        for r in rr.values()
                        if r.get("cpu_ticks") is not None and r["wrk"]["requests"]
                    ]
                ),
                "rss_max": max([r.get("rss_max_kb") or 0 for r in rr.values()]) or None,
                "errors": sum(r["wrk"]["errors"] + r["wrk"]["non2xx"] for r in rr.values()),
            }
        summary[target] = s

    w("## Request/response (non-streamed), wrk\n")
    w(
        "| | direct | nginx proxy | hyper floor | marathon | marathon / nginx | marathon / hyper floor |\n"
        "|---|---:|---:|---:|---:|---:|---:|"
    )

    def row(label, key, conc, unit="", digits=0, added=False):
        vals = []
        for t in ("direct", "nginx", "hyper", "marathon"):
            v = summary.get(t, {}).get(conc, {}).get(key)
            if added and t == "direct":
                v = None
            vals.append(v)
        w(
            f"| {label} | {fmt(vals[0], unit, digits)} | {fmt(vals[1], unit, digits)} | "
            f"{fmt(vals[2], unit, digits)} | {fmt(vals[3], unit, digits)} | "
            f"{fmt(ratio(vals[3], vals[1]), 'x', 2)} | {fmt(ratio(vals[3], vals[2]), 'x', 2)} |"
        )

    row("throughput c1 (req/s)", "rps", 1)
    row("throughput c64 (req/s)", "rps", 64)
    row("latency p50 c1", "p50", 1, " µs")
    row("latency p99 c1", "p99", 1, " µs")
    row("latency p50 c64", "p50", 64, " µs")
    row("latency p99 c64", "p99", 64, " µs")
    row("**added** p50 c1", "add50", 1, " µs", added=True)
    row("**added** p99 c1", "add99", 1, " µs", added=True)
    row("**added** p50 c64", "add50", 64, " µs", added=True)
    row("**added** p99 c64", "add99", 64, " µs", added=True)
    row("CPU per request c1 (proxy process; direct: origin)", "cpu", 1, " µs", 1)
    row("CPU per request c64 (proxy process; direct: origin)", "cpu", 64, " µs", 1)
    row("RSS max sampled during c64", "rss_max", 64, " KiB")
    row("errors + non-2xx (all rounds)", "errors", 64)

    rss = meta.get("rss", {})
    w("")
    w("| RSS (KiB) | nginx proxy (master + worker) | hyper floor | marathon |\n|---|---:|---:|---:|")
    for k, label in (("idle", "idle, after start"), ("warm", "idle, after warm-up"), ("hwm", "peak (VmHWM) at the end")):
        w(
            f"| {label} | {fmt(rss.get('nginx_' + k))} | {fmt(rss.get('hyper_' + k))} | "
            f"{fmt(rss.get('marathon_' + k))} |"
        )

    # per-round raw numbers, for judging noise
    w("\n<details><summary>per-round numbers</summary>\n")
    w("| round | target | conc | req/s | p50 µs | p99 µs | CPU/req µs |\n|---|---|---:|---:|---:|---:|---:|")
    for r in sorted(wrk, key=lambda r: (r.get("log", "warn"), r["round"], r["conc"], r["target"])):
        x = r["wrk"]
        cpu = r["cpu_ticks"] / tick / x["requests"] * 1e6 if x["requests"] else None
        name = r["target"] + (" (info log)" if r.get("log") == "info" else "")
        w(
            f"| {r['round']} | {name} | {r['conc']} | {fmt(x['requests'] / (x['duration_us'] / 1e6))} | "
            f"{x['p50_us']} | {x['p99_us']} | {fmt(cpu, '', 1)} |"
        )
    w("\n</details>\n")

    variants = [
        t for t in ("marathon-w2", "marathon-1thread", "marathon-mimalloc", "marathon-other") if runs(t, 64)
    ]
    if variants:
        w("## marathon variants (same rounds): what a change would buy\n")
        w(
            "`marathon-w2`: `serve --workers 2` (two event loops, each on its own SO_REUSEPORT listener). "
            "`marathon-1thread`: TOKIO_WORKER_THREADS=1 (one tokio worker, like nginx's one worker). "
            "`marathon-mimalloc`: LD_PRELOAD of Debian's libmimalloc (instead of glibc malloc). "
            "`marathon-other`: another binary (`OTHER_BIN`), same config.\n"
        )
        w("| | marathon | " + " | ".join(variants) + " | nginx |\n|---|---:|" + "---:|" * len(variants) + "---:|")
        for t in variants:
            s_ = {}
            for conc in (1, 64):
                rr = runs(t, conc)
                direct = runs("direct", conc)
                s_[conc] = {
                    "rps": med([r["wrk"]["requests"] / (r["wrk"]["duration_us"] / 1e6) for r in rr.values()]),
                    "add50": med(
                        [r["wrk"]["p50_us"] - direct[k]["wrk"]["p50_us"] for k, r in rr.items() if k in direct]
                    ),
                    "cpu": med([r["cpu_ticks"] / tick / r["wrk"]["requests"] * 1e6 for r in rr.values()]),
                    "rss_max": max([r.get("rss_max_kb") or 0 for r in rr.values()]) or None,
                }
            summary[t] = s_
        for label, key, conc, unit, digits in (
            ("throughput c64 (req/s)", "rps", 64, "", 0),
            ("added p50 c1", "add50", 1, " µs", 0),
            ("CPU per request c1", "cpu", 1, " µs", 1),
            ("CPU per request c64", "cpu", 64, " µs", 1),
            ("RSS max during c64", "rss_max", 64, " KiB", 0),
        ):
            cells = [fmt(summary[t][conc].get(key), unit, digits) for t in ["marathon"] + variants + ["nginx"]]
            w(f"| {label} | " + " | ".join(cells) + " |")
        w("")

    if runs("marathon-redis", 64):
        w("## Store backends: file vs Redis (same binary, same rounds)\n")
        w(
            "`marathon-redis`: `[store] backend = \"redis\"` on a local redis-server "
            "(appendonly yes, appendfsync everysec), the same accounts. Picks use the "
            "in-memory pool either way; Redis sees the 250 ms hot-state merge and pub/sub, "
            "not the requests. CPU is the marathon process's (redis-server's own is not counted). "
            "Target: redis / file ≤ 1.15x.\n"
        )
        s_ = {}
        for conc in (1, 64):
            rr = runs("marathon-redis", conc)
            direct = runs("direct", conc)
            s_[conc] = {
                "rps": med([r["wrk"]["requests"] / (r["wrk"]["duration_us"] / 1e6) for r in rr.values()]),
                "add50": med(
                    [r["wrk"]["p50_us"] - direct[k]["wrk"]["p50_us"] for k, r in rr.items() if k in direct]
                ),
                "cpu": med([r["cpu_ticks"] / tick / r["wrk"]["requests"] * 1e6 for r in rr.values()]),
            }
        summary["marathon-redis"] = s_
        w("| | file (marathon) | redis (marathon-redis) | redis / file |\n|---|---:|---:|---:|")
        for label, key, conc, unit, digits in (
            ("added p50 c1", "add50", 1, " µs", 0),
            ("added p50 c64", "add50", 64, " µs", 0),
            ("CPU per request c1", "cpu", 1, " µs", 1),
            ("CPU per request c64", "cpu", 64, " µs", 1),
            ("throughput c64 (req/s)", "rps", 64, "", 0),
        ):
            f_ = summary["marathon"][conc].get(key)
            r_ = s_[conc].get(key)
            w(f"| {label} | {fmt(f_, unit, digits)} | {fmt(r_, unit, digits)} | {fmt(ratio(r_, f_), 'x', 2)} |")
        w("")

    info = [r for r in wrk if r.get("log") == "info"]
    if info:
        w("## marathon with request logging (MARATHON_LOG=info, to a file), one run\n")
        w("| | warn (median) | info | info / warn |\n|---|---:|---:|---:|")
        for conc in (1, 64):
            ri = [r for r in info if r["conc"] == conc]
            if not ri:
                continue
            r = ri[0]
            x = r["wrk"]
            s = summary["marathon"][conc]
            rps = x["requests"] / (x["duration_us"] / 1e6)
            cpu = r["cpu_ticks"] / tick / x["requests"] * 1e6
            w(f"| throughput c{conc} (req/s) | {fmt(s['rps'])} | {fmt(rps)} | {fmt(ratio(rps, s['rps']), 'x', 2)} |")
            w(f"| p50 c{conc} µs | {fmt(s['p50'])} | {fmt(x['p50_us'])} | {fmt(ratio(x['p50_us'], s['p50']), 'x', 2)} |")
            w(f"| CPU/req c{conc} µs | {fmt(s['cpu'], '', 1)} | {fmt(cpu, '', 1)} | {fmt(ratio(cpu, s['cpu']), 'x', 2)} |")
        w("")

    # ---- streams
    def stream_stats(kind):
        by = {}
        for r in recs:
            if r["kind"] == kind:
                by.setdefault(r["target"], []).append(r)
        return by

    fb = stream_stats("first-byte")
    st = stream_stats("stream")
    if fb or st:
        events = med([r["events"] for r in st.get("direct", [])]) or 1
        n_fb = len(fb.get("direct", []))
        n_st = len(st.get("direct", []))
        w("## Streaming (marathon-sim `--fast`, chat-completions SSE, raw-socket client, targets interleaved)\n")
        w(
            f"First byte: the simulator's precomputed short stream, {n_fb} requests per target. "
            f"Per event: a stream of {events:.0f} SSE events sent as fast as the simulator can, "
            f"{n_st} requests per target; added per event = (whole stream proxied − direct) / events. "
            "CPU per event: the proxy process's CPU time (all threads, schedstat) over the request / events.\n"
        )
        w(
            "| | direct | nginx proxy (buffering off) | hyper floor | marathon | marathon / nginx | marathon / hyper floor |\n"
            "|---|---:|---:|---:|---:|---:|---:|"
        )
        first = {t: med([r["first_us"] for r in v]) for t, v in fb.items()}
        total = {t: med([r["total_us"] for r in v]) for t, v in st.items()}
        cpu_ev = {
            t: med([r["cpu_ns"] / 1e3 / max(r["events"], 1) for r in v if r.get("cpu_ns") is not None])
            for t, v in st.items()
        }
        cpu_fb = {
            t: med([r["cpu_ns"] / 1e3 for r in v if r.get("cpu_ns") is not None]) for t, v in fb.items()
        }

        def line(label, d, unit, digits=0, with_direct=True):
            w(
                f"| {label} | {fmt(d.get('direct') if with_direct else None, unit, digits)} | "
                f"{fmt(d.get('nginx'), unit, digits)} | {fmt(d.get('hyper'), unit, digits)} | "
                f"{fmt(d.get('marathon'), unit, digits)} | "
                f"{fmt(ratio(d.get('marathon'), d.get('nginx')), 'x', 2)} | "
                f"{fmt(ratio(d.get('marathon'), d.get('hyper')), 'x', 2)} |"
            )

        line("first byte (short stream)", first, " µs")
        if "direct" in first:
            line("**added** first byte", {t: first[t] - first["direct"] for t in first if t != "direct"}, " µs")
        line("CPU per short stream (proxy; direct: sim)", cpu_fb, " µs", 1)
        line(f"whole stream ({events:.0f} events)", total, " µs")
        if "direct" in total:
            line(
                "**added** per event",
                {t: (total[t] - total["direct"]) / events for t in total if t != "direct"},
                " µs",
                2,
            )
        line("CPU per event (proxy; direct: sim)", cpu_ev, " µs", 2)
        w("")

    # ---- failover
    fo = [r for r in recs if r["kind"] == "failover"]
    fs = next((r for r in recs if r["kind"] == "failover-summary"), None)
    if fs:
        w("## Failover (marathon-sim; the preferred account answers 429 with OpenAI reset headers in 1 s windows)\n")
        w(
            "Requests back to back for the whole period; each one that arrives after the preferred account's "
            "cooldown has ended fails over (429, then the other account). "
            "Added = failover latency − median of the 50 one-attempt requests just before it.\n"
        )
        w("| | requests | median latency | added |\n|---|---:|---:|---:|")
        w(f"| direct to the simulator (healthy key) | {fs['direct_n']} | {fmt(fs['direct_median_us'], ' µs')} | |")
        w(
            f"| through marathon, one attempt | {fs['one_n']} | {fmt(fs['one_median_us'], ' µs')} | "
            f"{fmt(ratio_sub(fs['one_median_us'], fs['direct_median_us']), ' µs')} vs direct |"
        )
        added = med([r["us"] - r["baseline_us"] for r in fo if r.get("baseline_us") is not None])
        w(
            f"| through marathon, failover (429, then 200) | {len(fo)} | {fmt(med([r['us'] for r in fo]), ' µs')} | "
            f"**{fmt(added, ' µs')}** vs one attempt |"
        )
        if fs.get("odd_n"):
            w(f"\n{fs['odd_n']} requests ended otherwise, e.g. {fs['odd'][0]}.")
        if fo:
            w(f"\nExample: `x-marathon-attempts: {fo[0]['trace']}`")
        w("")

    # ---- idle connections
    idle = {r["target"]: r for r in recs if r["kind"] == "idle"}
    if idle:
        w("## Idle keep-alive connections\n")
        w(
            "Each connection sends one request, reads the answer and stays open, idle; "
            "RSS of the proxy's processes before and a few seconds after, per connection.\n"
        )
        w("| | connections | still open | RSS before | RSS after | **per idle connection** |\n|---|---:|---:|---:|---:|---:|")
        for t in ("nginx", "marathon"):
            r = idle.get(t)
            if r:
                w(
                    f"| {t} | {r['connections']:,} | {r['still_open']:,} | {fmt(r['rss_before_kb'], ' KiB')} | "
                    f"{fmt(r['rss_after_kb'], ' KiB')} | **{fmt(r['kib_per_connection'], ' KiB', 2)}** |"
                )
        w("")

    # ---- targets
    m, n = summary.get("marathon", {}), summary.get("nginx", {})
    checks = []

    def check(name, value, limit, better, unmeasurable=None):
        ok = None if value is None else (value <= limit if better == "le" else value >= limit)
        sign = "≤" if better == "le" else "≥"
        checks.append((name, value, f"{sign} {limit}", unmeasurable or ok))

    check(
        "added p50 at c1, marathon / nginx",
        ratio(m.get(1, {}).get("add50"), n.get(1, {}).get("add50")),
        1.5,
        "le",
    )
    check("CPU per request at c64, marathon / nginx", ratio(m.get(64, {}).get("cpu"), n.get(64, {}).get("cpu")), 1.5, "le")
    check("throughput at c64, marathon / nginx", ratio(m.get(64, {}).get("rps"), n.get(64, {}).get("rps")), 0.7, "ge")
    rss_load = max(x for x in (m.get(64, {}).get("rss_max"), rss.get("marathon_hwm")) if x is not None) / 1024 if (
        m.get(64, {}).get("rss_max") or rss.get("marathon_hwm")
    ) else None
    check("RSS under load, MB (max of sampled VmRSS and VmHWM)", rss_load, 15, "le")
    if "marathon" in idle:
        check("RSS per idle keep-alive connection, KiB", idle["marathon"]["kib_per_connection"], 4, "le")
    if "marathon-w2" in summary:
        # A second event loop can only scale onto a core nobody else uses:
        # wrk, the origin and marathon share this machine. The cores left
        # idle while `--workers 1` ran at c64 say whether there was one.
        w1 = [r for r in wrk if r["target"] == "marathon" and r["conc"] == 64 and r.get("machine_idle_ticks") is not None]
        spare = None
        if w1:
            spare = med(
                [
                    r["machine_idle_ticks"] / max(1, r["machine_idle_ticks"] + r["machine_busy_ticks"]) * r["cpus"]
                    for r in w1
                ]
            )
        unmeasurable = None
        if spare is not None and spare < 0.8:
            unmeasurable = (
                f"n/a: {spare:.2f} of {w1[0]['cpus']} cores idle during `--workers 1` "
                "(wrk and the origin use the rest; no core for a second worker)"
            )
        check(
            "throughput at c64, --workers 2 / --workers 1",
            ratio(summary["marathon-w2"].get(64, {}).get("rps"), m.get(64, {}).get("rps")),
            1.6,
            "ge",
            unmeasurable,
        )
    w("## Targets\n")
    w("| target | measured | goal | |\n|---|---:|---:|---|")
    for name, value, goal, ok in checks:
        if isinstance(ok, str):
            verdict = ok
        else:
            verdict = "–" if ok is None else ("**pass**" if ok else "**FAIL**")
        w(f"| {name} | {fmt(value, '', 2)} | {goal} | {verdict} |")
    w("")
    text = "\n".join(out) + "\n"
    sys.stdout.write(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


def ratio_sub(a, b):
    if a is None or b is None:
        return None
    return a - b


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stream")
    s.add_argument("--target", action="append", required=True, help="NAME=URL")
    s.add_argument("--key", required=True)
    s.add_argument("--repeats", type=int, default=20)
    s.add_argument("--pid", action="append", help="NAME=PID[,PID]: measure these processes' CPU per request")
    s.add_argument("--kind", default="stream", help="record kind (stream, first-byte)")
    f = sub.add_parser("failover")
    f.add_argument("--proxy", required=True)
    f.add_argument("--key", default="sk-bench-client")
    f.add_argument("--direct", required=True)
    f.add_argument("--direct-key", required=True)
    f.add_argument("--seconds", type=float, default=20)
    i = sub.add_parser("idle")
    i.add_argument("--name", required=True)
    i.add_argument("--url", required=True)
    i.add_argument("--pid", required=True, help="PID[,PID]: the processes whose RSS counts")
    i.add_argument("--connections", type=int, default=10000)
    i.add_argument("--settle", type=float, default=3.0)
    r = sub.add_parser("report")
    r.add_argument("raw")
    r.add_argument("meta")
    r.add_argument("--out")
    args = p.parse_args()
    {"stream": cmd_stream, "failover": cmd_failover, "idle": cmd_idle, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
