#!/usr/bin/python3
"""Load test of `m3 serve` (issue 8): many concurrent OpenAI-style clients against one server.

Starts `m3 serve` on a loopback port (port 0: the server picks one and prints it) over a model
and a memory bank, then runs C client threads (http.client, one keep-alive connection each) that
send R requests each, a fixed mix drawn with a seeded generator per client:

    completion      /v1/completions with memory, non-streaming          30%
    chat            /v1/chat/completions with memory, non-streaming     25%
    completion-sse  /v1/completions, stream: true                      12%
    chat-sse        /v1/chat/completions, stream: true (+ usage chunk)  10%
    search          /v1/knowledge/search                                 5%
    invalid         a request the server must refuse with a 4xx         18%
                    (malformed JSON, wrong types, out-of-range fields, an unknown role, n = 2,
                    a body over --max-body (413), an unknown endpoint (404))

Every answer is checked: 200s have OpenAI's shape (choices, usage, "memories" and memory_mode
"memory"); a stream is well-formed Server-Sent Events ending in [DONE] with a finish_reason and
the memories on its last chunk; each invalid request gets exactly its expected status and an
OpenAI error object. 503 with Retry-After (back-pressure: all slots busy and the queue full) is
allowed and counted. While the clients run, the server's VmRSS and VmHWM are sampled from
/proc/PID/status every 0.2 s.

Fails (exit 1) on: any 5xx other than 503, a wrong status or malformed answer, a connection
error, a request slower than --request-timeout, the whole run longer than --deadline, the server
dying or not stopping cleanly on SIGTERM, or unbounded memory: the peak RSS of the last third of
the run above the peak of the first third by more than max(--rss-margin-pct %, --rss-margin-mb).

Reports: requests and their status counts, p50/p90/p99/max latency (all and per kind), time to
first event for streams, requests per second, the server's peak RSS (VmHWM) and the RSS thirds.
--json FILE also writes the numbers as JSON. Standard library only; run with /usr/bin/python3.
"""

import argparse
import http.client
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

QUESTIONS = [
    "What is the capital of Chad?",
    "On which continent is Andorra?",
    "In what year was praseodymium discovered?",
    "Which city does the airport code AAL serve?",
    "What is the capital of Burkina Faso?",
    "On which continent is North Macedonia?",
    "What is the chemical symbol of tungsten?",
    "Which city does the airport code ABQ serve?",
]

KINDS = [("completion", 30), ("chat", 25), ("completion-sse", 12), ("chat-sse", 10), ("search", 5), ("invalid", 18)]


def invalid_requests(max_body):
    """(name, method, path, body bytes, expected status)."""
    big = json.dumps({"prompt": "x" * (max_body + 1024)}).encode()
    return [
        ("malformed-json", "POST", "/v1/completions", b'{"prompt": "x",', 400),
        ("invalid-utf8", "POST", "/v1/completions", b'{"prompt": "\xc3\x28"}', 400),
        ("not-an-object", "POST", "/v1/chat/completions", b"[1, 2]", 400),
        ("missing-prompt", "POST", "/v1/completions", b'{"max_tokens": 4}', 400),
        ("max-tokens-type", "POST", "/v1/completions", b'{"prompt": "x", "max_tokens": "8"}', 400),
        ("max-tokens-range", "POST", "/v1/completions", b'{"prompt": "x", "max_tokens": 1000000}', 400),
        ("temperature-range", "POST", "/v1/chat/completions",
         b'{"messages": [{"role": "user", "content": "x"}], "temperature": 7}', 400),
        ("unknown-role", "POST", "/v1/chat/completions", b'{"messages": [{"role": "tool", "content": "x"}]}', 400),
        ("n-2", "POST", "/v1/completions", b'{"prompt": "x", "n": 2}', 400),
        ("token-out-of-range", "POST", "/v1/completions", b'{"prompt": [1, 99999999]}', 400),
        ("body-too-large", "POST", "/v1/completions", big, 413),
        ("unknown-endpoint", "POST", "/v1/no-such-endpoint", b"{}", 404),
        ("search-k-range", "POST", "/v1/knowledge/search", b'{"query": "x", "k": 0}', 400),
    ]


def percentile(values, p):
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def read_status(pid):
    """VmRSS and VmHWM of a process in MiB, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            text = f.read()
    except OSError:
        return None
    out = {}
    for key in ("VmRSS", "VmHWM"):
        m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
        out[key] = int(m.group(1)) / 1024.0 if m else 0.0
    return out


class Failure(Exception):
    pass


class Results:
    def __init__(self):
        self.lock = threading.Lock()
        self.records = []  # (kind, status, seconds, first_event_seconds or None)
        self.slowest = []  # the 5 slowest (seconds, request, status)
        self.failures = []

    def add(self, kind, status, seconds, ttfe=None, what=""):
        with self.lock:
            self.records.append((kind, status, seconds, ttfe))
            self.slowest.append((seconds, what, status))
            self.slowest = sorted(self.slowest, reverse=True)[:5]

    def fail(self, message):
        with self.lock:
            self.failures.append(message)


def check_error_object(body, what):
    try:
        j = json.loads(body)
    except ValueError:
        raise Failure(f"{what}: error body is not JSON: {body[:200]!r}")
    if not isinstance(j, dict) or "error" not in j or "message" not in j["error"]:
        raise Failure(f"{what}: not an OpenAI error object: {body[:200]!r}")


def check_completion(body, chat, what):
    j = json.loads(body)
    choice = j["choices"][0]
    if chat:
        if not isinstance(choice["message"]["content"], str):
            raise Failure(f"{what}: no message content")
    elif not isinstance(choice["text"], str):
        raise Failure(f"{what}: no text")
    if choice["finish_reason"] not in ("stop", "length"):
        raise Failure(f"{what}: finish_reason {choice['finish_reason']!r}")
    if j.get("memory_mode") != "memory" or not isinstance(j.get("memories"), list) or not j["memories"]:
        raise Failure(f"{what}: no memories in the answer (memory_mode {j.get('memory_mode')!r})")
    if j["usage"]["completion_tokens"] < 0 or j["usage"]["prompt_tokens"] < 1:
        raise Failure(f"{what}: bad usage {j['usage']}")


def read_stream(resp, chat, what):
    """Reads an SSE response to [DONE]; returns seconds to the first event (from the call)."""
    first = None
    finish = None
    memories = None
    usage = False
    done = False
    t0 = time.monotonic()
    while True:
        line = resp.readline()
        if not line:
            break
        line = line.rstrip(b"\r\n")
        if not line:
            continue
        if first is None:
            first = time.monotonic() - t0
        if not line.startswith(b"data: "):
            raise Failure(f"{what}: not an SSE data line: {line[:120]!r}")
        data = line[6:]
        if data == b"[DONE]":
            done = True
            continue
        if done:
            raise Failure(f"{what}: data after [DONE]")
        j = json.loads(data)
        if "error" in j:
            raise Failure(f"{what}: error inside the stream: {j['error']}")
        if j.get("usage"):
            usage = True
            continue
        c = j["choices"][0]
        if c.get("finish_reason") is not None:
            finish = c["finish_reason"]
            memories = j.get("memories")
    if not done:
        raise Failure(f"{what}: stream ended without [DONE]")
    if finish not in ("stop", "length"):
        raise Failure(f"{what}: stream finish_reason {finish!r}")
    if not isinstance(memories, list) or not memories:
        raise Failure(f"{what}: the last stream chunk carries no memories")
    if chat and not usage:
        raise Failure(f"{what}: stream_options.include_usage gave no usage chunk")
    return first


def client(cid, args, port, results, invalid, stop_at):
    rng = random.Random(args.seed * 1000 + cid)
    kinds = [k for k, w in KINDS for _ in range(w)]
    conn = None
    for i in range(args.requests):
        if time.monotonic() > stop_at:
            results.fail(f"client {cid}: the run passed its --deadline of {args.deadline} s")
            return
        kind = rng.choice(kinds)
        q = rng.choice(QUESTIONS)
        max_tokens = rng.choice([4, 8, 12, 16])
        temperature = rng.choice([0, 0.7])
        expect = 200
        method, path = "POST", "/v1/completions"
        if kind == "completion" or kind == "completion-sse":
            body = {"prompt": f"Q: {q}\nA:", "max_tokens": max_tokens, "temperature": temperature,
                    "stop": ["\n"], "seed": rng.randrange(1 << 30)}
            if kind.endswith("sse"):
                body["stream"] = True
        elif kind == "chat" or kind == "chat-sse":
            path = "/v1/chat/completions"
            body = {"messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": q}],
                    "max_tokens": max_tokens, "temperature": temperature}
            if kind.endswith("sse"):
                body["stream"] = True
                body["stream_options"] = {"include_usage": True}
        elif kind == "search":
            path = "/v1/knowledge/search"
            body = {"query": q, "k": rng.randint(1, 10)}
        else:
            name, method, path, raw, expect = rng.choice(invalid)
            kind = "invalid"
            body = None
        data = raw if body is None else json.dumps(body).encode()
        what = f"client {cid} request {i} ({kind} {path})"
        t0 = time.monotonic()
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=args.request_timeout)
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            status = resp.status
            ttfe = None
            if status == 200 and kind.endswith("sse"):
                ttfe = read_stream(resp, kind.startswith("chat"), what)
                payload = b""
            else:
                payload = resp.read()
            seconds = time.monotonic() - t0
            if resp.getheader("Connection", "").lower() == "close" or status == 413:
                conn.close()
                conn = None
            if status == 503:
                if resp.getheader("Retry-After") is None:
                    raise Failure(f"{what}: 503 without Retry-After")
                check_error_object(payload, what)
            elif status >= 500:
                raise Failure(f"{what}: status {status}: {payload[:300]!r}")
            elif status != expect:
                raise Failure(f"{what}: status {status}, expected {expect}: {payload[:300]!r}")
            elif status == 200 and kind in ("completion", "chat"):
                check_completion(payload, kind == "chat", what)
            elif status == 200 and kind == "search":
                if not isinstance(json.loads(payload).get("data"), list):
                    raise Failure(f"{what}: no search hits list")
            elif status != 200:
                check_error_object(payload, what)
            results.add(kind, status, seconds, ttfe, what)
        except Failure as e:
            results.fail(str(e))
            results.add(kind, -1, time.monotonic() - t0)
            if conn is not None:
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException, ValueError, KeyError, IndexError, TypeError) as e:
            results.fail(f"{what}: {type(e).__name__}: {e}")
            results.add(kind, -1, time.monotonic() - t0)
            if conn is not None:
                conn.close()
                conn = None
    if conn is not None:
        conn.close()


def start_server(args):
    cmd = [args.m3, "serve", "-m", args.model, "--bank", args.bank, "--port", "0", "--read-only",
           "--slots", str(args.slots), "--queue", str(args.queue), "-t", str(args.threads),
           "--cache-mb", str(args.cache_mb), "--max-body", str(args.max_body)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if m:
            # Keep draining the server's output so it never blocks on a full pipe.
            threading.Thread(target=lambda: [lines.append(l) for l in proc.stdout], daemon=True).start()
            return proc, int(m.group(1)), lines
    proc.kill()
    raise SystemExit("load test: m3 serve did not start:\n" + "".join(lines[-20:]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--m3", required=True, help="the m3 binary")
    ap.add_argument("--model", required=True)
    ap.add_argument("--bank", required=True, help="a memory bank written by this model (m3 memorize)")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=50, help="requests per client")
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--queue", type=int, default=32, help="the server's queue (below --clients - --slots: expect 503s)")
    ap.add_argument("--threads", type=int, default=2, help="the server's threads in all")
    ap.add_argument("--cache-mb", type=int, default=16,
                    help="the server's memory cache: small, so that it is full early and RSS growth after that is a leak")
    ap.add_argument("--max-body", type=int, default=65536)
    ap.add_argument("--request-timeout", type=float, default=120)
    ap.add_argument("--deadline", type=float, default=600, help="seconds for the whole run")
    ap.add_argument("--rss-margin-pct", type=float, default=10)
    ap.add_argument("--rss-margin-mb", type=float, default=32)
    ap.add_argument("--rss-check", choices=["on", "off"], default="on",
                    help="judge whether memory stays bounded (off under ASan, whose quarantine and shadow memory "
                         "dominate RSS; LeakSanitizer checks the server for leaks when it exits instead)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    proc, port, server_lines = start_server(args)
    results = Results()
    samples = []  # (seconds since start, VmRSS MiB)
    sampling = threading.Event()

    def sampler():
        t0 = time.monotonic()
        while not sampling.is_set():
            s = read_status(proc.pid)
            if s is None:
                return
            samples.append((time.monotonic() - t0, s["VmRSS"]))
            time.sleep(0.2)

    print(f"load test: m3 serve on 127.0.0.1:{port} (pid {proc.pid}), {args.slots} slots, queue {args.queue}, "
          f"{args.threads} threads; {args.clients} clients x {args.requests} requests", flush=True)
    sample_thread = threading.Thread(target=sampler, daemon=True)
    sample_thread.start()
    invalid = invalid_requests(args.max_body)
    t_start = time.monotonic()
    stop_at = t_start + args.deadline
    threads = [threading.Thread(target=client, args=(c, args, port, results, invalid, stop_at), daemon=True)
               for c in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, stop_at - time.monotonic()) + args.request_timeout)
    wall = time.monotonic() - t_start
    if any(t.is_alive() for t in threads):
        results.fail(f"clients still running after the --deadline of {args.deadline} s (+ one request timeout)")
    sampling.set()
    sample_thread.join()

    status = read_status(proc.pid)
    alive = proc.poll() is None and status is not None
    if not alive:
        results.fail(f"the server died during the run (exit {proc.poll()}):\n" + "".join(server_lines[-20:]))
    peak_rss = status["VmHWM"] if status else max((r for _, r in samples), default=0.0)
    if alive:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            c.request("GET", "/health")
            h = c.getresponse()
            h.read()
            if h.status != 200:
                results.fail(f"/health answered {h.status} after the run")
        except OSError as e:
            results.fail(f"/health after the run: {e}")
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(30)
            if rc != 0:
                results.fail(f"m3 serve exited {rc} on SIGTERM:\n" + "".join(server_lines[-20:]))
        except subprocess.TimeoutExpired:
            proc.kill()
            results.fail("m3 serve did not stop within 30 s of SIGTERM")

    # Memory: the run's samples in thirds by time.
    run_samples = [(t, r) for t, r in samples if t <= wall]
    thirds = [[], [], []]
    for t, r in run_samples:
        thirds[min(2, int(3 * t / wall)) if wall > 0 else 0].append(r)
    first_peak = max(thirds[0], default=0.0)
    last_peak = max(thirds[2], default=0.0)
    allowed = first_peak + max(first_peak * args.rss_margin_pct / 100.0, args.rss_margin_mb)
    bounded = last_peak <= allowed if args.rss_check == "on" else None
    if bounded is False:
        results.fail(f"memory is not bounded: RSS peak {last_peak:.1f} MiB in the last third of the run, "
                     f"{first_peak:.1f} MiB in the first (allowed {allowed:.1f})")

    recs = results.records
    counts = {}
    for _, st, _, _ in recs:
        counts[str(st)] = counts.get(str(st), 0) + 1
    lat = [s for _, st, s, _ in recs if st == 200]
    by_kind = {}
    for kind, _ in KINDS:
        ks = [s for k, st, s, _ in recs if k == kind and st >= 0]
        if ks:
            by_kind[kind] = {"n": len(ks), "p50_ms": 1000 * percentile(ks, 50), "p99_ms": 1000 * percentile(ks, 99)}
    ttfe = [f for _, st, _, f in recs if f is not None]
    report = {
        "clients": args.clients,
        "requests_per_client": args.requests,
        "requests": len(recs),
        "served_200": counts.get("200", 0),
        "status_counts": dict(sorted(counts.items())),
        "wall_s": wall,
        "requests_per_s": len(recs) / wall if wall > 0 else 0,
        "latency_ms_200": {p: (1000 * percentile(lat, int(p[1:])) if lat else None) for p in ("p50", "p90", "p99")},
        "latency_ms_200_max": 1000 * max(lat) if lat else None,
        "latency_by_kind": by_kind,
        "stream_first_event_ms": {"p50": 1000 * percentile(ttfe, 50) if ttfe else None,
                                  "p99": 1000 * percentile(ttfe, 99) if ttfe else None},
        "server_peak_rss_mib": peak_rss,
        "rss_first_third_peak_mib": first_peak,
        "rss_last_third_peak_mib": last_peak,
        "rss_allowed_mib": allowed,
        "memory_bounded": bounded,
        "rss_samples": len(run_samples),
        "slowest": [{"ms": 1000 * t, "request": w, "status": st} for t, w, st in results.slowest],
        "failures": results.failures[:50],
        "failure_count": len(results.failures),
        "server": {"slots": args.slots, "queue": args.queue, "threads": args.threads, "cache_mb": args.cache_mb},
    }
    fmt = lambda x: "-" if x is None else f"{x:.0f}"
    print(f"load test: {len(recs)} requests in {wall:.1f} s ({report['requests_per_s']:.1f}/s); status counts "
          + ", ".join(f"{k}: {v}" for k, v in report["status_counts"].items()))
    print(f"load test: latency of 200s p50 {fmt(report['latency_ms_200']['p50'])} ms, p90 {fmt(report['latency_ms_200']['p90'])} ms, "
          f"p99 {fmt(report['latency_ms_200']['p99'])} ms, max {fmt(report['latency_ms_200_max'])} ms; "
          f"streams' first event p50 {fmt(report['stream_first_event_ms']['p50'])} ms")
    for kind, v in by_kind.items():
        print(f"load test:   {kind:15s} n {v['n']:4d}  p50 {v['p50_ms']:7.1f} ms  p99 {v['p99_ms']:7.1f} ms")
    print(f"load test: server peak RSS (VmHWM) {peak_rss:.1f} MiB; RSS peak first third {first_peak:.1f} MiB, "
          f"last third {last_peak:.1f} MiB (allowed {allowed:.1f}): memory "
          + {True: "bounded", False: "NOT bounded", None: "not judged (--rss-check off)"}[bounded])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    if results.failures:
        print(f"load test: FAILED ({len(results.failures)} problems); the first ones:", file=sys.stderr)
        for m in results.failures[:10]:
            print("  " + m, file=sys.stderr)
        return 1
    print("load test: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
