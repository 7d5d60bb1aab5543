#!/usr/bin/env python3
"""The personalised feed's benchmark driver (docs/benchmarks.md, "Personalised feed"), run by
scripts/bench/feed.sh against a server seeded by seed_feed.*.sql:

  feed_bench.py --base URL --pid PID --secret SECRET [--redis URL] [--hello URL] [--rounds N]

1. the full recompute (GET /api/batch/run_scheduler as user00001): wall time, and the server's
   resident memory before and its peak (VmHWM) after; with --redis, Redis's used_memory too;
2. the incremental cost of an interaction: 1,000 views and 500 likes, one at a time, each on
   another post: latency and server CPU per request, beside 1,000 post-details reads;
3. interaction to feed: users 9981-10000 (no follows, no history) each like three posts tagged
   hot<k>, then load their feed: the time from the last like's answer to a feed page that holds
   other hot<k> posts;
4. with --hello: cached-mode GET /api/feed with wrk (each request another user's next page of
   their list: a third of the users per round) next to a bare warp hello world, in alternating
   rounds of a few seconds; the cached share is checked from the server's counters.
"""
import argparse, base64, hashlib, hmac, http.client, json, os, re, statistics, subprocess
import sys, tempfile, time, urllib.parse


def token(secret: str, user: str, ttl: int = 86400) -> str:
    def b64(b: bytes) -> str:
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    now = int(time.time())
    head = b64(json.dumps({"alg": "HS256"}, separators=(",", ":")).encode())
    body = b64(json.dumps({"sub": user, "role": "USER", "iat": now, "exp": now + ttl},
                          separators=(",", ":")).encode())
    sig = b64(hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest())
    return f"{head}.{body}.{sig}"


class Client:
    def __init__(self, base: str):
        u = urllib.parse.urlparse(base)
        self.host, self.port = u.hostname, u.port
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=3600)

    def call(self, method: str, path: str, tok: str = None, body=None):
        headers = {}
        if tok:
            headers["Authorization"] = f"Bearer {tok}"
        data = None
        if isinstance(body, bytes):
            data = body
            headers["Content-Type"] = "text/plain"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        self.conn.request(method, path, body=data, headers=headers)
        res = self.conn.getresponse()
        raw = res.read()
        try:
            return res.status, json.loads(raw) if raw else None
        except ValueError:
            return res.status, raw.decode(errors="replace")


def proc_status(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])  # kB
    return 0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric(base: str, name: str) -> float:
    status, text = Client(base).call("GET", "/metrics")
    for line in str(text).splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def redis_used(url: str) -> int:
    out = subprocess.run(["redis-cli", "-u", url, "info", "memory"], capture_output=True, text=True).stdout
    m = re.search(r"used_memory:(\d+)", out)
    return int(m.group(1)) if m else 0


def timed(n, fn):
    lat = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        lat.append(time.perf_counter() - t)
    return lat


def summary(lat):
    lat = sorted(lat)
    return (f"mean {statistics.mean(lat) * 1000:.2f} ms, p50 {lat[len(lat) // 2] * 1000:.2f} ms, "
            f"p99 {lat[int(len(lat) * 0.99)] * 1000:.2f} ms")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--secret", required=True)
    ap.add_argument("--redis")
    ap.add_argument("--hello")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=3)
    a = ap.parse_args()
    pid, base = a.pid, a.base
    admin = token(a.secret, "user00001")

    # 1. The full recompute.
    rss = proc_status(pid, "VmRSS")
    r0 = redis_used(a.redis) if a.redis else 0
    c = Client(base)
    t = time.perf_counter()
    status, body = c.call("GET", "/api/batch/run_scheduler", admin)
    took = time.perf_counter() - t
    assert status == 200, (status, body)
    hwm = proc_status(pid, "VmHWM")
    users = metric(base, "instar_feed_users_processed_total")
    failed = metric(base, "instar_feed_list_rebuild_failures_total")
    print(f"recompute: {took:.1f} s for {users:.0f} users ({failed:.0f} failures), "
          f"{took / max(users, 1) * 1000:.2f} ms a user; RSS {rss / 1024:.0f} MB before, "
          f"peak {hwm / 1024:.0f} MB (+{(hwm - rss) / 1024:.0f} MB)")
    if a.redis:
        r1 = redis_used(a.redis)
        print(f"recompute: Redis used_memory {r0 / 2**20:.0f} MB -> {r1 / 2**20:.0f} MB "
              f"(+{(r1 - r0) / 2**20:.0f} MB)")

    # 2. The cost of an interaction, beside a read.
    viewer = token(a.secret, "user00500")
    def view(i):
        s, b = c.call("POST", "/api/post/view_history", viewer, {"postId": 50001 + i})
        assert s == 200, (s, b)
    def like(i):
        s, b = c.call("POST", f"/api/post/like?postId={60001 + i}", viewer, b"")
        assert s == 200, (s, b)
    def details(i):
        s, b = c.call("GET", f"/api/post/get/details_info?postId={70001 + i}", viewer)
        assert s == 200, (s, b)
    for name, n, fn in [("post details (read)", 1000, details), ("view", 1000, view), ("like", 500, like)]:
        cpu = cpu_seconds(pid)
        lat = timed(n, fn)
        cpu = cpu_seconds(pid) - cpu
        print(f"interaction: {name:20} x{n}: {summary(lat)}; server CPU {cpu / n * 1e6:.0f} us a request")

    # 3. Interaction to feed.
    lats, ok = [], 0
    for k in range(1, 21):
        tok = token(a.secret, f"user{9980 + k:05d}")
        hot = list(range(100001 + (k - 1) * 30, 100001 + k * 30))
        for p in hot[:3]:
            s, b = c.call("POST", f"/api/post/like?postId={p}", tok, b"")
            assert s == 200, (s, b)
        t = time.perf_counter()
        s, b = c.call("GET", "/api/feed", tok)
        lats.append(time.perf_counter() - t)
        ids = {p["postId"] for p in b["feed"]}
        ok += bool(ids & set(hot[3:]))
    print(f"interaction to feed: {ok}/20 feeds held the liked tag's other posts; "
          f"from the last like's answer to the feed page: {summary(lats)}, max {max(lats) * 1000:.1f} ms")

    # 4. Cached mode against a bare hello world.
    if not a.hello:
        return
    tmp = tempfile.mkdtemp(prefix="feedbench")
    rounds = a.rounds
    for r in range(rounds):
        with open(f"{tmp}/tokens{r}", "w") as f:
            for i in range(2 + r, 9981, rounds):
                f.write(token(a.secret, f"user{i:05d}") + "\n")
    lua = f"{tmp}/feed.lua"
    with open(lua, "w") as f:
        f.write("""
local counter = 0
function setup(thread) thread:set("id", counter); counter = counter + 1 end
function init(args)
  tokens = {}
  for line in io.lines(args[1]) do tokens[#tokens + 1] = line end
  n = id
end
function request()
  n = n + 2
  local t = tokens[(n % #tokens) + 1]
  return wrk.format("GET", "/api/feed", {["Authorization"] = "Bearer " .. t})
end
""")
    def wrk(url, extra, script_args=()):
        # wrk takes the URL before `--`; what follows `--` goes to the Lua script.
        cmd = ["wrk", "-t2", "-c64", f"-d{a.seconds}s", "--latency", *extra, url]
        if script_args:
            cmd += ["--", *script_args]
        res = subprocess.run(cmd, capture_output=True, text=True)
        found = re.search(r"Requests/sec:\s+([\d.]+)", res.stdout)
        if not found:
            raise SystemExit(f"wrk gave no rate: {' '.join(cmd)}\n{res.stdout}{res.stderr}")
        out = res.stdout
        rps = float(found.group(1))
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        p99 = re.search(r"99%\s+(\S+)", out)
        return rps, int(non2xx.group(1)) if non2xx else 0, p99.group(1) if p99 else "?"
    shares = []
    for r in range(rounds):
        h, _, hp99 = wrk(a.hello, [])
        cached0 = metric(base, "instar_feed_cached_pages_total")
        fb0 = metric(base, "instar_feed_fallback_pages_total")
        cpu = cpu_seconds(pid)
        f, bad, fp99 = wrk(base + "/api/feed", ["-s", lua], [f"{tmp}/tokens{r}"])
        cpu = cpu_seconds(pid) - cpu
        cached = metric(base, "instar_feed_cached_pages_total") - cached0
        fb = metric(base, "instar_feed_fallback_pages_total") - fb0
        shares.append(f / h)
        print(f"round {r + 1}: hello {h:,.0f} req/s (p99 {hp99}); feed {f:,.0f} req/s (p99 {fp99}, "
              f"{bad} non-2xx, {cached:,.0f} cached pages / {fb:,.0f} fallback, "
              f"server CPU {cpu / max(cached + fb, 1) * 1e6:.0f} us a page): {f / h * 100:.0f} % of hello")
    print(f"cached feed / hello: {', '.join(f'{s * 100:.0f} %' for s in shares)}")


if __name__ == "__main__":
    sys.exit(main())
