"""stomp.py against the gateway as a broker for its own pub/sub (destination rules open
/topic/py.** and /queue/**): receipts, queues shared round robin, ACK/NACK and redelivery,
transactions, unsubscribe, non-ASCII bodies and escaped header values, topic order and wildcards.

Usage: python stomppy_broker.py <tcp|ws> <host> <port> <token> <user>
Prints one JSON line {"event": "done", "ok": bool, "checks": {name: true|"why"}}; exits 0 when every
check passed.
"""
import json
import queue
import sys
import time
import uuid

import stomp

mode, host, port, token, user = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
WAIT = 5
checks = {}


class Collector(stomp.ConnectionListener):
    def __init__(self):
        self.messages = queue.Queue()
        self.receipts = queue.Queue()
        self.errors = []

    def on_message(self, frame):
        self.messages.put(frame)

    def on_receipt(self, frame):
        self.receipts.put(frame.headers.get("receipt-id"))

    def on_error(self, frame):
        self.errors.append(frame.headers.get("message"))

    def next(self, wait=WAIT):
        try:
            return self.messages.get(timeout=wait)
        except queue.Empty:
            return None

    def quiet(self, wait=0.3):
        return self.next(wait) is None

    def receipt(self, rid, wait=WAIT):
        deadline = time.time() + wait
        while time.time() < deadline:
            try:
                if self.receipts.get(timeout=max(0.01, deadline - time.time())) == rid:
                    return True
            except queue.Empty:
                return False
        return False


def connect():
    if mode == "ws":
        conn = stomp.WSConnection([(host, port)], ws_path="/stomp", heartbeats=(0, 0))
    else:
        conn = stomp.Connection12([(host, port)], heartbeats=(0, 0))
    listener = Collector()
    conn.set_listener("c", listener)
    conn.connect(user, token, wait=True, headers={"accept-version": "1.2"})
    return conn, listener


def confirmed(conn, listener, fn, **kw):
    rid = "r-" + uuid.uuid4().hex[:8]
    fn(receipt=rid, **kw)
    if not listener.receipt(rid):
        raise AssertionError("no RECEIPT for %s (errors: %s)" % (rid, listener.errors))


def check(name):
    def wrap(fn):
        try:
            fn()
            checks[name] = True
        except Exception as e:  # noqa: BLE001 - every failure is reported by name
            checks[name] = "%s: %s" % (type(e).__name__, e)
        return fn
    return wrap


tag = uuid.uuid4().hex[:8]
a, la = connect()
b, lb = connect()
p, lp = connect()


@check("receipts")
def _():
    confirmed(p, lp, p.send, destination="/queue/py-r-" + tag, body="x")
    confirmed(p, lp, p.begin, transaction="t-r")
    confirmed(p, lp, p.abort, transaction="t-r")


@check("round_robin")
def _():
    q = "/queue/py-rr-" + tag
    confirmed(a, la, a.subscribe, destination=q, id="rr", ack="client-individual")
    confirmed(b, lb, b.subscribe, destination=q, id="rr", ack="client-individual")
    for i in range(6):
        confirmed(p, lp, p.send, destination=q, body=str(i))
    got = {"a": [], "b": []}
    for name, conn, lst in (("a", a, la), ("b", b, lb)):
        for _ in range(3):
            m = lst.next()
            assert m is not None, "%s got only %s" % (name, got[name])
            got[name].append(int(m.body))
            conn.ack(m.headers["ack"])
    assert got == {"a": [0, 2, 4], "b": [1, 3, 5]}, got
    assert la.quiet() and lb.quiet()
    confirmed(a, la, a.unsubscribe, id="rr")
    confirmed(b, lb, b.unsubscribe, id="rr")


@check("nack_redelivery")
def _():
    q = "/queue/py-nack-" + tag
    confirmed(a, la, a.subscribe, destination=q, id="n", ack="client")
    confirmed(p, lp, p.send, destination=q, body="again")
    m = la.next()
    assert m is not None and m.headers.get("redelivered") == "false", m
    # As stomp.py's own tests do: the message-id names the message to NACK.
    a.nack(m.headers["message-id"])
    m2 = la.next()
    assert m2 is not None and m2.body == "again" and m2.headers.get("redelivered") == "true", m2
    confirmed(a, la, a.ack, id=m2.headers["message-id"])
    assert la.quiet()
    confirmed(a, la, a.unsubscribe, id="n")


@check("disconnect_redelivery")
def _():
    q = "/queue/py-drop-" + tag
    c, lc = connect()
    confirmed(c, lc, c.subscribe, destination=q, id="d", ack="client")
    confirmed(p, lp, p.send, destination=q, body="orphan")
    assert lc.next() is not None
    c.disconnect()
    confirmed(b, lb, b.subscribe, destination=q, id="d", ack="auto")
    m = lb.next()
    assert m is not None and m.body == "orphan" and m.headers.get("redelivered") == "true", m
    confirmed(b, lb, b.unsubscribe, id="d")


@check("transactions")
def _():
    q = "/queue/py-tx-" + tag
    confirmed(a, la, a.subscribe, destination=q, id="t", ack="auto")
    p.begin(transaction="tx1")
    p.send(destination=q, body="aborted 1", transaction="tx1")
    p.send(destination=q, body="aborted 2", transaction="tx1")
    confirmed(p, lp, p.abort, transaction="tx1")
    assert la.quiet(), "an aborted transaction delivered"
    p.begin(transaction="tx2")
    p.send(destination=q, body="c1", transaction="tx2")
    p.send(destination=q, body="c2", transaction="tx2")
    assert la.quiet(), "delivered before COMMIT"
    confirmed(p, lp, p.commit, transaction="tx2")
    got = [la.next(), la.next()]
    assert [m.body for m in got if m] == ["c1", "c2"], got
    confirmed(a, la, a.unsubscribe, id="t")


@check("unsubscribe")
def _():
    q = "/queue/py-un-" + tag
    confirmed(a, la, a.subscribe, destination=q, id="u", ack="auto")
    confirmed(b, lb, b.subscribe, destination=q, id="u", ack="auto")
    confirmed(a, la, a.unsubscribe, id="u")
    for i in range(4):
        confirmed(p, lp, p.send, destination=q, body=str(i))
    assert [lb.next().body for _ in range(4)] == ["0", "1", "2", "3"]
    assert la.quiet()
    confirmed(b, lb, b.unsubscribe, id="u")


@check("non_ascii_and_escapes")
def _():
    t = "/topic/py.text." + tag
    confirmed(a, la, a.subscribe, destination=t, id="x", ack="auto")
    headers = {"special-1": "test with colon : test", "special-2": "test with backslash \\ test",
               "special-3": "test with newline \n", "x-name": "марко 안녕"}
    body = "марко ǰ捁楴敶免 안녕하세요"
    confirmed(p, lp, p.send, destination=t, body=body, headers=headers)
    m = la.next()
    assert m is not None and m.body == body, m
    for k, v in headers.items():
        assert m.headers.get(k) == v, (k, m.headers.get(k))
    confirmed(a, la, a.unsubscribe, id="x")


@check("topic_order_and_wildcards")
def _():
    base = "/topic/py.order." + tag
    confirmed(a, la, a.subscribe, destination=base, id="o", ack="auto")
    confirmed(b, lb, b.subscribe, destination="/topic/py.order.*", id="w", ack="auto")
    for i in range(50):
        p.send(destination=base, body=str(i))
    confirmed(p, lp, p.send, destination=base, body="end")
    for lst in (la, lb):
        bodies = [lst.next().body for _ in range(51)]
        assert bodies == [str(i) for i in range(50)] + ["end"], bodies[:5]
    confirmed(a, la, a.unsubscribe, id="o")
    confirmed(b, lb, b.unsubscribe, id="w")


@check("refused_without_rule")
def _():
    c, lc = connect()
    c.send(destination="/queue/admin.secret", body="x")
    deadline = time.time() + WAIT
    while not lc.errors and time.time() < deadline:
        time.sleep(0.05)
    assert lc.errors and "not authorised" in lc.errors[0], lc.errors


for conn in (a, b, p):
    try:
        conn.disconnect()
    except Exception:  # noqa: BLE001 - already gone
        pass
errors = la.errors + lb.errors + lp.errors
ok = all(v is True for v in checks.values()) and not errors
print(json.dumps({"event": "done", "ok": ok, "checks": checks, "errors": errors}, ensure_ascii=False), flush=True)
sys.exit(0 if ok else 1)
