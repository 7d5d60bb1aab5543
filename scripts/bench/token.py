#!/usr/bin/env python3
"""Prints an HS256 token for a user: token.py SECRET USER [TTL_SECONDS] (benchmarks only)."""
import base64, hashlib, hmac, json, sys, time

def b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

secret, user = sys.argv[1], sys.argv[2]
ttl = int(sys.argv[3]) if len(sys.argv) > 3 else 3600
now = int(time.time())
head = b64(json.dumps({"alg": "HS256"}, separators=(",", ":")).encode())
body = b64(json.dumps({"sub": user, "role": "USER", "iat": now, "exp": now + ttl}, separators=(",", ":")).encode())
sig = b64(hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest())
print(f"{head}.{body}.{sig}")
