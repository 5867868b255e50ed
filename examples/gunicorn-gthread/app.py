"""The smallest WSGI app for the handoff hooks, served by gunicorn's gthread workers.

GET /            -> 200 "<RELEASE>\n", X-Release: <RELEASE>   (?sleep_ms=N: answer N ms later)
GET /healthz     -> 200 "ok\n", X-Instance: <INSTANCE>        (INSTANCE = release id, set by the unit)

The drain itself is in gunicorn.conf.py (a lame duck on SIGTERM); the app needs no change
for it (/healthz stays 200 while draining: the health path speaks for the host).
"""
import os
import time
from urllib.parse import parse_qs

RELEASE = os.environ.get("RELEASE", "dev")
INSTANCE = os.environ.get("INSTANCE", "-")


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/healthz":
        # handoff: 200 while draining too: the health path speaks for the host, and the next
        # instance serves it; a balancer's check must never fail during a switch.
        return reply(start_response, "200 OK", b"ok\n")
    if path == "/":
        query = parse_qs(environ.get("QUERY_STRING", ""))
        try:
            sleep_ms = int(query.get("sleep_ms", ["0"])[0])
        except ValueError:
            return reply(start_response, "400 Bad Request", b"sleep_ms: not a number\n")
        if sleep_ms > 0:
            time.sleep(min(sleep_ms, 600_000) / 1000)
        return reply(start_response, "200 OK", f"{RELEASE}\n".encode())
    return reply(start_response, "404 Not Found", b"not found\n")


def reply(start_response, status, body):
    start_response(status, [
        ("Content-Type", "text/plain"),
        ("Content-Length", str(len(body))),
        ("X-Release", RELEASE),
        ("X-Instance", INSTANCE),
    ])
    return [body]
