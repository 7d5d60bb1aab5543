"""stomp.py over raw TCP against the gateway: CONNECT with the token as passcode, SUBSCRIBE to the
user's queue, SEND to /app/echo, receive the echo and a server push, DISCONNECT with a receipt.

Usage: python stomppy_flow.py <host> <port> <token> <user>
Prints one JSON object per line ("ready", then "done"); exits 0 when every check passed.
"""
import json
import sys
import threading

import stomp

host, port, token, user = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
got = []
errors = []
done = threading.Event()
echoed = threading.Event()


class Listener(stomp.ConnectionListener):
    def on_message(self, frame):
        got.append({"destination": frame.headers.get("destination"), "body": frame.body,
                    "subscription": frame.headers.get("subscription")})
        if frame.headers.get("destination") == "/user/queue/echo":
            # Frames are handled in order, so both subscriptions are live once the echo is back.
            echoed.set()
        if len(got) >= 3:
            done.set()

    def on_error(self, frame):
        errors.append(frame.headers.get("message"))
        echoed.set()
        done.set()


conn = stomp.Connection([(host, port)], heartbeats=(0, 0), auto_content_length=True)
conn.set_listener("", Listener())
conn.connect(user, token, wait=True, headers={"accept-version": "1.2"})
conn.subscribe(destination="/user/queue/echo", id="e", ack="auto")
conn.subscribe(destination="/user/queue/notify", id="n", ack="auto", headers={"receipt": "sub-ok"})
conn.send(destination="/app/echo", body=json.dumps({"message": "안녕"}, ensure_ascii=False),
          headers={"receipt": "sent"})
echoed.wait(15)
print(json.dumps({"event": "ready"}), flush=True)
done.wait(15)
conn.disconnect(receipt="bye")
ok = not errors and len(got) == 3 \
    and any(g["destination"] == "/user/queue/echo" and "안녕" in g["body"] for g in got) \
    and sum(g["destination"] == "/user/queue/notify" and g["subscription"] == "n" for g in got) == 2
print(json.dumps({"event": "done", "ok": ok, "got": got, "errors": errors}, ensure_ascii=False), flush=True)
sys.exit(0 if ok else 1)
