"""The smallest ASGI app for the handoff hooks, served by uvicorn (see serve.py).

GET /            -> 200 "<RELEASE>\n", X-Release: <RELEASE>   (?sleep_ms=N: answer N ms later)
GET /healthz     -> 200 "ok\n", X-Instance: <INSTANCE>; 200 while draining too
GET /ws          -> WebSocket: sends RELEASE, then echoes every text message
"""
import asyncio
import os
from urllib.parse import parse_qs

RELEASE = os.environ.get("RELEASE", "dev")
INSTANCE = os.environ.get("INSTANCE", "-")
# handoff: set by serve.py when SIGTERM comes (the drain has begun).
draining = False


async def app(scope, receive, send):
    if scope["type"] == "http":
        await http(scope, receive, send)
    elif scope["type"] == "websocket":
        await websocket(scope, receive, send)
    elif scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})


async def http(scope, receive, send):
    path = scope["path"]
    if path == "/healthz":
        # handoff: 200 while draining too: the health path speaks for the host, and the next
        # instance serves it; a balancer's check must never fail during a switch.
        return await reply(send, 200, b"ok\n")
    if path == "/":
        query = parse_qs(scope["query_string"].decode("latin-1"))
        try:
            sleep_ms = int(query.get("sleep_ms", ["0"])[0])
        except ValueError:
            return await reply(send, 400, b"sleep_ms: not a number\n")
        if sleep_ms > 0:
            await asyncio.sleep(min(sleep_ms, 600_000) / 1000)
        return await reply(send, 200, f"{RELEASE}\n".encode())
    await reply(send, 404, b"not found\n")


async def reply(send, status, body):
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"text/plain"),
            (b"content-length", str(len(body)).encode()),
            (b"x-release", RELEASE.encode()),
            (b"x-instance", INSTANCE.encode()),
        ],
    })
    await send({"type": "http.response.body", "body": body})


async def websocket(scope, receive, send):
    await receive()  # websocket.connect
    if scope["path"] != "/ws":
        return await send({"type": "websocket.close", "code": 1008})
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": RELEASE})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
