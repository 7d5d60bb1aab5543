"""Smoke check run by `scripts/test --setup-only`.

One STOMP round trip through RabbitMQ's STOMP port with stomp.py, and an S3
put/get against the S3 endpoint (moto) with boto3, as the tests do.
"""

import os
import sys
import threading
import time
import urllib.parse

import boto3
import stomp


def stomp_round_trip() -> None:
    host, port = os.environ.get("INSTAR_TEST_RABBIT_STOMP", "127.0.0.1:61613").rsplit(":", 1)
    dest = f"/queue/instar-smoke-py-{os.getpid()}-{int(time.time() * 1000)}"
    got = threading.Event()

    class Listener(stomp.ConnectionListener):
        def on_message(self, frame):
            got.set()

    started = time.monotonic()
    conn = stomp.Connection([(host, int(port))], heartbeats=(0, 0))
    conn.set_listener("", Listener())
    conn.connect("guest", "guest", wait=True)
    conn.subscribe(destination=dest, id="1", ack="auto", headers={"auto-delete": "true"})
    conn.send(destination=dest, body="hello")
    ok = got.wait(15)
    conn.disconnect()
    if not ok:
        sys.exit(f"python smoke: no STOMP round trip via {host}:{port} within 15 s")
    ms = (time.monotonic() - started) * 1000
    print(f"python smoke: stomp.py round trip via {host}:{port} ok ({ms:.0f} ms)")


def s3_round_trip() -> None:
    endpoint = os.environ["INSTAR_TEST_S3_ENDPOINT"]
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=os.environ.get("AWS_REGION", "us-east-1"),
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "test"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "test"),
    )
    bucket = f"instar-smoke-{os.getpid()}-{int(time.time())}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="k", Body=b"v")
    body = s3.get_object(Bucket=bucket, Key="k")["Body"].read()
    s3.delete_object(Bucket=bucket, Key="k")
    s3.delete_bucket(Bucket=bucket)
    if body != b"v":
        sys.exit(f"python smoke: S3 get returned {body!r}")
    print(f"python smoke: boto3 put/get via {urllib.parse.urlsplit(endpoint).netloc} ok")


if __name__ == "__main__":
    stomp_round_trip()
    s3_round_trip()
