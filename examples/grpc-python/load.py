"""Calls the example's gRPC service without pause until a deadline, and prints what came back as
one JSON line: calls that succeeded and failed, by kind, and the releases that answered.

    python3 load.py 127.0.0.1:8080 SECONDS [UNARY_THREADS] [STREAM_THREADS]

Unary calls (Say) and server-streaming calls (Count, 10 messages 100 ms apart, so each is open
for about a second) go on their own threads, each thread on a channel of its own: one HTTP/2
connection each, as separate clients would have.
"""
import json
import sys
import threading
import time

import grpc

target, seconds = sys.argv[1], float(sys.argv[2])
unary_threads = int(sys.argv[3]) if len(sys.argv) > 3 else 4
stream_threads = int(sys.argv[4]) if len(sys.argv) > 4 else 4
deadline = time.monotonic() + seconds
lock = threading.Lock()
tally = {"unary_ok": 0, "unary_failed": 0, "streams_ok": 0, "streams_failed": 0, "messages": 0}
releases = {}
errors = []


def failed(kind, e):
    with lock:
        tally[kind] += 1
        if len(errors) < 5:
            errors.append(f"{kind}: {e.code() if hasattr(e, 'code') else ''} {e}")


def unary():
    with grpc.insecure_channel(target) as ch:
        say = ch.unary_unary("/shop.Echo/Say")
        while time.monotonic() < deadline:
            try:
                reply = say(b"hi", timeout=10)
                release = reply.split(b":")[0].decode()
                with lock:
                    tally["unary_ok"] += 1
                    releases[release] = releases.get(release, 0) + 1
            except grpc.RpcError as e:
                failed("unary_failed", e)


def stream():
    with grpc.insecure_channel(target) as ch:
        count = ch.unary_stream("/shop.Echo/Count")
        while time.monotonic() < deadline:
            try:
                got = [m for m in count(b"10", timeout=20)]
                if len(got) != 10 or len({m.split(b" ")[0] for m in got}) != 1:
                    raise ValueError(f"a stream of {len(got)} messages: {got}")
                with lock:
                    tally["streams_ok"] += 1
                    tally["messages"] += len(got)
            except (grpc.RpcError, ValueError) as e:
                failed("streams_failed", e)


threads = [threading.Thread(target=unary) for _ in range(unary_threads)]
threads += [threading.Thread(target=stream) for _ in range(stream_threads)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({**tally, "releases": releases, "errors": errors}), flush=True)
