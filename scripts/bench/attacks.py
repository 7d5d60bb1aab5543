#!/usr/bin/env python3
"""The abuse benchmark of docs/benchmarks.md ("Abuse resistance"): a second client's sign-in, feed and
chat latency under each attack of the abuse tests, next to the same client's latency without the
attack, in the same run (the goal: within 2x).

    scripts/bench/attacks.py [--bin DIR] [--phase SECS] [ATTACK ...]

ATTACK is one of: slow idle flood xff header password chat (default: all). For each attack the
script measures a quiet phase, then the same phase with the attack running from another process at
full speed, and prints a table of p50/p99 per operation with the ratios. `instar serve` (release
build: cargo build --release -p instar) runs on a fresh SQLite data directory with its default
limits, `INSTAR_TRUSTED_PROXIES=none` (the socket peer is the client) and the STOMP/TCP listener on.
The attacker uses the source address 127.0.0.2; the measured client 127.0.0.9 (STOMP) and a fresh
127.0.0.x per phase for REST, so the per-address sign-in limit of one phase does not carry over.
Standard library only.
"""

import os
import sys

# This directory holds token.py, which would shadow the standard library's `token` module.
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import http.client
import json
import multiprocessing as mp
import random
import re
import selectors
import signal
import socket
import subprocess
import tempfile
import threading
import time

SECRET = "attack-bench-secret-attack-bench-secret!"
PASSWORD = "correct horse battery staple"
ATTACKER = "127.0.0.2"
PROBE_STOMP = "127.0.0.9"
ATTACKS = ["slow", "idle", "flood", "xff", "header", "password", "chat"]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def request(port, method, path, body=None, token=None, source="127.0.0.1", headers=None, timeout=10):
    """One request on a fresh connection: (status, parsed JSON or text)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, source_address=(source, 0))
    try:
        h = dict(headers or {})
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        if token:
            h["Authorization"] = f"Bearer {token}"
        conn.request(method, path, body=data, headers=h)
        res = conn.getresponse()
        raw = res.read()
        try:
            return res.status, json.loads(raw)
        except ValueError:
            return res.status, raw.decode(errors="replace")
    finally:
        conn.close()


# ---- the server ----------------------------------------------------------------------------------


class Server:
    def __init__(self, binary):
        self.dir = tempfile.mkdtemp(prefix="instar-attacks.")
        self.port, self.tcp = free_port(), free_port()
        self.log_path = os.path.join(self.dir, "server.log")
        env = dict(os.environ,
                   INSTAR_JWT_SECRET=SECRET, INSTAR_DATA_DIR=os.path.join(self.dir, "data"),
                   INSTAR_LISTEN=f"127.0.0.1:{self.port}", INSTAR_TCP_LISTEN=f"127.0.0.1:{self.tcp}",
                   INSTAR_TRUSTED_PROXIES="none", INSTAR_LOG="warn,social::mail=info")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([os.path.join(binary, "instar"), "serve"], env=env,
                                     stdout=self.log, stderr=self.log)
        for _ in range(200):
            try:
                if request(self.port, "GET", "/health/ready", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"instar serve did not become ready; see {self.log_path}")

    def mailed_code(self, email):
        for _ in range(100):
            with open(self.log_path, errors="replace") as f:
                for line in reversed(f.readlines()):
                    if email in line and "body=" in line:
                        digits = re.findall(r"\d", line.split("body=", 1)[1])
                        if len(digits) >= 5:
                            return "".join(digits[:5])
            time.sleep(0.05)
        raise SystemExit(f"no verification code logged for {email}")

    def account(self, uid):
        email = f"{uid}@example.com"
        s, b = request(self.port, "GET", f"/api/auth/send/email?receive_email={email}")
        assert s == 200, (s, b)
        s, b = request(self.port, "POST", "/api/auth/signUp", {
            "id": uid, "password": PASSWORD, "name": uid, "sex": "female", "email": email,
            "email_code": self.mailed_code(email), "address": "Seoul", "addressDetail": "1",
            "duplicateCheckId": True})
        assert (s, b) == (200, {"code": "SC"}), (s, b)
        s, b = request(self.port, "POST", "/api/auth/signIn", {"id": uid, "password": PASSWORD})
        assert s == 200, (s, b)
        return b["token"]

    def usage(self):
        """(RSS MiB, open file descriptors) of the server now."""
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024
            return rss, len(os.listdir(f"/proc/{self.proc.pid}/fd"))
        except (OSError, StopIteration):
            return float("nan"), -1

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


# ---- STOMP over TCP --------------------------------------------------------------------------------


class Stomp:
    """A minimal STOMP 1.2 client over TCP: enough to send and to watch MESSAGE bodies."""

    def __init__(self, port, token, source, on_body=None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10,
                                             source_address=(source, 0))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.send_frame("CONNECT", {"accept-version": "1.2", "host": "/", "heart-beat": "0,0",
                                    "Authorization": f"Bearer {token}"})
        command, _, body = self.read_frame()
        if command != "CONNECTED":
            raise RuntimeError(f"CONNECT answered {command}: {body[:200]!r}")
        self.on_body = on_body
        self.closed = threading.Event()
        if on_body:
            self.sock.settimeout(None)
            threading.Thread(target=self.reader, daemon=True).start()

    def send_frame(self, command, headers, body=b""):
        head = "".join(f"{k}:{v}\n" for k, v in headers.items())
        self.sock.sendall(f"{command}\n{head}\n".encode() + body + b"\0")

    def read_frame(self):
        while b"\0" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
            self.buf = self.buf.lstrip(b"\n\r")
        frame, self.buf = self.buf.split(b"\0", 1)
        self.buf = self.buf.lstrip(b"\n\r")
        head, _, body = frame.partition(b"\n\n")
        lines = head.decode(errors="replace").split("\n")
        headers = dict(l.split(":", 1) for l in lines[1:] if ":" in l)
        return lines[0].strip(), headers, body

    def reader(self):
        try:
            while True:
                command, _, body = self.read_frame()
                if command == "MESSAGE":
                    self.on_body(body, time.perf_counter())
                elif command == "ERROR":
                    break
        except OSError:
            pass
        self.closed.set()

    def subscribe(self, destination):
        self.send_frame("SUBSCRIBE", {"id": "s1", "destination": destination, "ack": "auto"})

    def chat(self, room, text):
        self.send_frame("SEND", {"destination": "/app/send", "content-type": "application/json"},
                        json.dumps({"chatRoomId": room, "message": text}).encode())


# ---- the measured client -----------------------------------------------------------------------------


class Probe:
    """Alice's sign-in, feed and chat (to Bob) timings, a sample every `period` seconds."""

    def __init__(self, server, token_alice, token_bob, room):
        self.server, self.token, self.room = server, token_alice, room
        self.arrived = {}
        self.lock = threading.Lock()
        self.bob = Stomp(server.tcp, token_bob, PROBE_STOMP, self.on_body)
        self.bob.subscribe(f"/topic/chat.{room}")
        self.alice = Stomp(server.tcp, token_alice, PROBE_STOMP)
        self.n = 0
        time.sleep(0.5)

    def on_body(self, body, at):
        m = re.search(rb"probe-(\d+)-", body)
        if m:
            with self.lock:
                self.arrived[int(m.group(1))] = at

    def timed(self, f):
        t = time.perf_counter()
        try:
            ok = f()
        except OSError:
            ok = False
        return time.perf_counter() - t, ok

    def phase(self, seconds, source, period=0.25):
        """Samples for `seconds`: {"signin": [...], "feed": [...], "chat": [...]} (s), failures."""
        out = {"signin": [], "feed": [], "chat": []}
        failed = {"signin": 0, "feed": 0, "chat": 0}
        sent = {}
        end = time.perf_counter() + seconds
        next_signin = 0.0
        while time.perf_counter() < end:
            tick = time.perf_counter()
            if tick >= next_signin:
                dt, ok = self.timed(lambda: request(
                    self.server.port, "POST", "/api/auth/signIn",
                    {"id": "alice0001", "password": PASSWORD}, source=source)[0] == 200)
                out["signin"].append(dt)
                failed["signin"] += not ok
                next_signin = tick + 1.0
            dt, ok = self.timed(lambda: request(self.server.port, "GET", "/api/feed",
                                                token=self.token, source=source)[0] == 200)
            out["feed"].append(dt)
            failed["feed"] += not ok
            self.n += 1
            sent[self.n] = time.perf_counter()
            try:
                self.alice.chat(self.room, f"probe-{self.n}-")
            except OSError:
                failed["chat"] += 1
            time.sleep(max(0.0, period - (time.perf_counter() - tick)))
        time.sleep(2.0)  # the last chat messages' way through
        with self.lock:
            for n, t in sent.items():
                if n in self.arrived:
                    out["chat"].append(self.arrived[n] - t)
                else:
                    failed["chat"] += 1
                    out["chat"].append(10.0)
        return out, failed


# ---- the attacks (each runs in its own process until told to stop) ---------------------------------


def connect_nb(port):
    s = socket.socket()
    s.bind((ATTACKER, 0))
    s.setblocking(False)
    s.connect_ex(("127.0.0.1", port))
    return s


def attack_connections(port, stop, stats, trickle, target=700):
    """Keeps `target` connections open from one address: idle, or sending a header byte a second."""
    sel = selectors.DefaultSelector()
    socks = {}
    last = time.monotonic()
    while not stop.is_set():
        while len(socks) < target and not stop.is_set():
            try:
                s = connect_nb(port)
            except OSError:
                stats["refused"] += 1
                time.sleep(0.01)
                break
            socks[s.fileno()] = s
            sel.register(s, selectors.EVENT_READ)
            stats["opened"] += 1
            if trickle:
                try:
                    s.send(b"GET /api/feed HTTP/1.1\r\nHost: x\r\n")
                except OSError:
                    pass
        for key, _ in sel.select(timeout=0.2):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if not data:  # the server closed it (timeout or cap)
                stats["closed_by_server"] += 1
                sel.unregister(s)
                socks.pop(s.fileno(), None)
                s.close()
        if trickle and time.monotonic() - last >= 1.0:
            last = time.monotonic()
            for s in list(socks.values()):
                try:
                    s.send(b"X")
                except OSError:
                    pass
        stats["open_now"] = len(socks)
    for s in socks.values():
        s.close()


def attack_flood(port, stop, stats):
    """Opens and closes connections as fast as one process can (64 in flight)."""
    while not stop.is_set():
        batch = []
        for _ in range(64):
            try:
                batch.append(connect_nb(port))
                stats["opened"] += 1
            except OSError:
                stats["refused"] += 1
        time.sleep(0.001)
        for s in batch:
            s.close()


def http_loop(port, stop, stats, make, threads):
    def worker():
        conn = None
        while not stop.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5,
                                                      source_address=(ATTACKER, 0))
                method, path, body, headers = make()
                conn.request(method, path, body=body, headers=headers)
                res = conn.getresponse()
                res.read()
                stats[f"status_{res.status}"] += 1
                if res.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                stats["errors"] += 1
                if conn:
                    conn.close()
                conn = None
    ts = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def attack_xff(port, stop, stats):
    """Wrong-password sign-ins for random ids, each with a fresh spoofed X-Forwarded-For."""
    def make():
        ip = ".".join(str(random.randrange(1, 255)) for _ in range(4))
        body = json.dumps({"id": f"victim{random.randrange(10**6)}", "password": "guess"}).encode()
        return "POST", "/api/auth/signIn", body, {"Content-Type": "application/json",
                                                  "X-Forwarded-For": ip}
    http_loop(port, stop, stats, make, 8)


def attack_header(port, stop, stats):
    """Requests carrying a 400 KB header."""
    big = "a" * 400_000
    http_loop(port, stop, stats, lambda: ("GET", "/api/feed", None, {"X-Big": big}), 4)


def attack_password(port, stop, stats):
    """100 concurrent wrong passwords for the measured client's own id, again and again."""
    def make():
        body = json.dumps({"id": "alice0001", "password": f"guess{random.random()}"}).encode()
        return "POST", "/api/auth/signIn", body, {"Content-Type": "application/json"}
    http_loop(port, stop, stats, make, 100)


def attack_chat(tcp, token, room, stop, stats):
    """Mallory's STOMP session sends chat messages to her own room as fast as it can; when the
    server closes the session she connects again."""
    text = "flood " * 10
    while not stop.is_set():
        try:
            s = Stomp(tcp, token, ATTACKER)
            stats["sessions"] += 1
            while not stop.is_set():
                for _ in range(100):
                    s.chat(room, text)
                stats["sent"] += 100
        except (OSError, RuntimeError):
            stats["closed_by_server"] += 1
            time.sleep(0.05)


def run_attack(name, server_port, tcp, mallory, room, stop, shared):
    stats = CounterDict()
    done = threading.Event()

    def publish():
        while not done.is_set():
            shared.update(stats)
            time.sleep(0.2)
    threading.Thread(target=publish, daemon=True).start()
    if name == "slow":
        attack_connections(server_port, stop, stats, trickle=True)
    elif name == "idle":
        attack_connections(server_port, stop, stats, trickle=False)
    elif name == "flood":
        attack_flood(server_port, stop, stats)
    elif name == "xff":
        attack_xff(server_port, stop, stats)
    elif name == "header":
        attack_header(server_port, stop, stats)
    elif name == "password":
        attack_password(server_port, stop, stats)
    elif name == "chat":
        attack_chat(tcp, mallory, room, stop, stats)
    done.set()
    shared.update(stats)


class CounterDict(dict):
    def __missing__(self, key):
        return 0


# ---- the run --------------------------------------------------------------------------------------


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.path.join(os.path.dirname(__file__), "../../target/release"))
    ap.add_argument("--phase", type=float, default=10.0, help="seconds per phase (default 10)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("attacks", nargs="*", help=" ".join(ATTACKS))
    args = ap.parse_args()
    attacks = args.attacks or ATTACKS
    for a in attacks:
        if a not in ATTACKS:
            ap.error(f"unknown attack {a!r}: one of {' '.join(ATTACKS)}")
    server = Server(args.bin)
    results = []
    try:
        tokens = {u: server.account(u) for u in ["alice0001", "bob00001", "mallory01", "carol0001"]}
        s, b = request(server.port, "POST", "/api/chat/create", {"users": ["bob00001"]},
                       token=tokens["alice0001"])
        assert s == 200, (s, b)
        room = b["chatRoomId"]
        s, b = request(server.port, "POST", "/api/chat/create", {"users": ["carol0001"]},
                       token=tokens["mallory01"])
        assert s == 200, (s, b)
        mallory_room = b["chatRoomId"]
        probe = Probe(server, tokens["alice0001"], tokens["bob00001"], room)
        address = 20
        for name in attacks:
            address += 1
            quiet, quiet_failed = probe.phase(args.phase, f"127.0.0.{address}")
            address += 1
            manager = mp.Manager()
            shared = manager.dict()
            stop = mp.Event()
            p = mp.Process(target=run_attack, args=(name, server.port, server.tcp,
                                                    tokens["mallory01"], mallory_room, stop, shared))
            p.start()
            time.sleep(2.0)  # let the attack reach its full force
            loud, loud_failed = probe.phase(args.phase, f"127.0.0.{address}")
            rss, fds = server.usage()
            stop.set()
            p.join(30)
            if p.is_alive():
                p.kill()
            stats = dict(shared)
            manager.shutdown()
            if probe.bob.closed.is_set():
                raise SystemExit("the measured chat session was closed during the attack")
            row = {"attack": name, "attacker": stats, "server_rss_mib": rss, "server_fds": fds,
                   "ops": {}}
            for op in ["signin", "feed", "chat"]:
                row["ops"][op] = {
                    "quiet_p50_ms": pct(quiet[op], 50) * 1000, "quiet_p99_ms": pct(quiet[op], 99) * 1000,
                    "attack_p50_ms": pct(loud[op], 50) * 1000, "attack_p99_ms": pct(loud[op], 99) * 1000,
                    "quiet_failed": quiet_failed[op], "attack_failed": loud_failed[op],
                    "samples": len(loud[op]),
                }
            results.append(row)
            print(f"[attacks] {name}: attacker {stats}, server RSS {rss:.0f} MiB, {fds} fds",
                  file=sys.stderr, flush=True)
            time.sleep(3.0)  # the server closes what the attack left behind
    finally:
        server.stop()
    print("| attack | operation | p50 quiet → attack (ms) | ratio | p99 quiet → attack (ms) | ratio | failed quiet / attack |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        for op, o in r["ops"].items():
            print(f"| {r['attack']} | {op} | {o['quiet_p50_ms']:.1f} → {o['attack_p50_ms']:.1f} "
                  f"| {o['attack_p50_ms'] / o['quiet_p50_ms']:.2f} "
                  f"| {o['quiet_p99_ms']:.1f} → {o['attack_p99_ms']:.1f} "
                  f"| {o['attack_p99_ms'] / o['quiet_p99_ms']:.2f} "
                  f"| {o['quiet_failed']} / {o['attack_failed']} |")
    print()
    for r in results:
        a = ", ".join(f"{k} {v}" for k, v in sorted(r["attacker"].items()))
        print(f"- {r['attack']}: attacker {a}; server {r['server_rss_mib']:.0f} MiB RSS, "
              f"{r['server_fds']} open files at the end of the attack phase")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
