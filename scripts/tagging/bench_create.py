#!/usr/bin/env python3
"""What image labelling costs `POST /api/post/create`, and how long a post waits for its tags
(docs/benchmarks.md, "Automatic tags").

    bench_create.py INSTAR_BINARY [POSTS] [ROUNDS] [GAP_MS]

Starts a fake Google Cloud Vision on loopback (fixed labels, answers at once), then `instar serve`
on a fresh SQLite data directory ROUNDS times with labelling off and on, alternating (off, on,
off, on, ...): each run creates POSTS posts one after another (one 64x48 PNG, two hashtags), GAP_MS
apart (default 0: back to back, so each create meets the worker labelling the one before; 20: the
worker is done, so only the request's own share is left), and records each request's time. The
fake Vision runs in a process of its own, so its answers do not compete with the client for
Python's interpreter lock. With labelling on it then creates 30 more posts, one at a time, and
polls the database every 2 ms for their AI_TAG rows: the time from the create's answer to the
stored tags. Prints per mode the median, p90 and mean create time, and the ratio on/off.
Loopback only; every loop is bounded.
"""

import hashlib
import hmac
import base64
import http.server
import json
import multiprocessing
import os
import shutil
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib

SECRET = "bench-secret-0123456789abcdef0123456789"
LABELS = {"responses": [{"labelAnnotations": [
    {"description": d, "score": 0.9 - i / 100, "mid": f"/m/{i}"}
    for i, d in enumerate(["Sky", "Cloud", "Dog", "Tree", "Water", "Grass"])]}]}


class FakeVision(http.server.BaseHTTPRequestHandler):
    calls = None  # a multiprocessing.Value shared with the parent

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", "0")))
        with FakeVision.calls.get_lock():
            FakeVision.calls.value += 1
        body = json.dumps(LABELS).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def png(w=64, h=48):
    raw = b"".join(b"\x00" + b"".join(bytes((x * 4 % 256, y * 5 % 256, 90)) for x in range(w)) for y in range(h))

    def chunk(kind, data):
        c = struct.pack(">I", len(data)) + kind + data
        return c + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def token(user):
    def b64(b):
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    now = int(time.time())
    head = b64(json.dumps({"alg": "HS256"}, separators=(",", ":")).encode())
    body = b64(json.dumps({"sub": user, "role": "USER", "iat": now, "exp": now + 3600},
                          separators=(",", ":")).encode())
    sig = b64(hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest())
    return f"{head}.{body}.{sig}"


def multipart(image, data):
    boundary = "benchboundary7d1c"
    parts = [
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"a.png\"\r\n"
        f"Content-Type: image/png\r\n\r\n".encode() + image + b"\r\n",
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"data\"\r\n\r\n".encode()
        + json.dumps(data).encode() + b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ]
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def start_server(binary, data_dir, vision):
    env = dict(os.environ)
    for k in list(env):
        if k.startswith("INSTAR_"):
            del env[k]
    env.update({
        "INSTAR_LISTEN": "127.0.0.1:0", "INSTAR_TCP_LISTEN": "off", "INSTAR_JWT_SECRET": SECRET,
        "INSTAR_DATA_DIR": data_dir, "INSTAR_LOG": "warn,instar=info,social=info",
    })
    if vision:
        env["INSTAR_TAGS_VISION_API_KEY"] = "bench-key"
        env["INSTAR_TAGS_VISION_ENDPOINT"] = vision
    proc = subprocess.Popen([binary, "serve"], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        if "HTTP listening" in line and "addr=" in line:
            addr = line.split("addr=")[1].split()[0]
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, f"http://{addr}"
    proc.kill()
    raise SystemExit("instar serve did not start")


def create(base, tok, image, i):
    body, ctype = multipart(image, {"comment": f"bench {i} #서울여행 #sea", "hashtags": ["서울여행", "sea"]})
    req = urllib.request.Request(f"{base}/api/post/create", data=body, method="POST",
                                 headers={"Content-Type": ctype, "Authorization": f"Bearer {tok}"})
    start = time.perf_counter()
    with urllib.request.urlopen(req, timeout=30) as r:
        answer = json.loads(r.read())
    return time.perf_counter() - start, answer["postId"]


def serve_vision(calls, port):
    FakeVision.calls = calls
    http.server.ThreadingHTTPServer(("127.0.0.1", port), FakeVision).serve_forever()


def run(binary, posts, vision, gap):
    data_dir = tempfile.mkdtemp(prefix="instar-bench-tags-")
    proc, base = start_server(binary, data_dir, vision)
    try:
        db = sqlite3.connect(os.path.join(data_dir, "instar.db"), timeout=10)
        # Authors in turn, so that no one reaches the per-user write quota.
        users = [f"bench{u:02d}" for u in range(50)]
        db.executemany("INSERT INTO user (id, password, name, email, comment, profile_image, created_at) "
                       "VALUES (?, NULL, 'Bench', ? || '@example.com', '', NULL, 1700000000000000)",
                       [(u, u) for u in users])
        db.commit()
        toks = [token(u) for u in users]
        tok = toks[0]
        image = png()
        create(base, tok, image, -1)  # warm-up
        times = []
        for i in range(posts):
            times.append(create(base, toks[i % len(toks)], image, i)[0])
            if gap:
                time.sleep(gap)
        waits = []
        if vision:
            # Let the labels of the timed posts land first.
            deadline = time.time() + 60
            while db.execute("SELECT COUNT(*) FROM tag_job").fetchone()[0] and time.time() < deadline:
                time.sleep(0.01)
            for i in range(30):
                _, post = create(base, toks[(posts + i) % len(toks)], image, 10_000 + i)
                answered = time.perf_counter()
                deadline = answered + 10
                while time.perf_counter() < deadline:
                    if db.execute("SELECT 1 FROM post_tags WHERE post_id = ? AND type = 'AI_TAG' LIMIT 1",
                                  (post,)).fetchone():
                        break
                    time.sleep(0.002)
                waits.append(time.perf_counter() - answered)
        return times, waits
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(data_dir, ignore_errors=True)


def ms(xs, q):
    xs = sorted(xs)
    return 1000 * xs[min(len(xs) - 1, int(q * len(xs)))]


def main():
    binary = sys.argv[1]
    posts = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    gap = (float(sys.argv[4]) if len(sys.argv) > 4 else 0.0) / 1000
    s = __import__("socket").socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    calls = multiprocessing.Value("i", 0)
    fake = multiprocessing.Process(target=serve_vision, args=(calls, port), daemon=True)
    fake.start()
    vision = f"http://127.0.0.1:{port}/v1/images:annotate"
    off, on, waits = [], [], []
    for _ in range(rounds):
        t, _ = run(binary, posts, None, gap)
        off += t
        t, w = run(binary, posts, vision, gap)
        on += t
        waits += w
    for name, xs in (("labelling off", off), ("labelling on", on)):
        print(f"{name}: {len(xs)} creates, p50 {ms(xs, 0.5):.2f} ms, p90 {ms(xs, 0.9):.2f} ms, "
              f"mean {1000 * statistics.mean(xs):.2f} ms")
    print(f"ratio on/off: p50 {ms(on, 0.5) / ms(off, 0.5):.3f}, mean {statistics.mean(on) / statistics.mean(off):.3f}")
    print(f"create answered -> AI_TAG rows stored: {len(waits)} posts, p50 {ms(waits, 0.5):.1f} ms, "
          f"p90 {ms(waits, 0.9):.1f} ms, max {1000 * max(waits):.1f} ms (Vision calls: {calls.value})")
    fake.terminate()


if __name__ == "__main__":
    main()
