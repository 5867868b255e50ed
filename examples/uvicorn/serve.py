"""Runs app.py under uvicorn on the listening socket systemd passes (fd 3), with a lame duck.

Stock `uvicorn --fd 3 app:app` on SIGTERM stops accepting, closes every idle keep-alive
connection at once (a non-retrying client that sends its next request on one at that moment
gets an error) and drops WebSockets without a close frame (0.17; 1012 from 0.21). The lines
marked `handoff:` make it lose nothing:

1. SIGTERM starts a lame duck (LAME_DUCK_S) before uvicorn's own graceful shutdown: it stops
   accepting at once (connections queued on the shared socket go to the new instance), every
   response carries `Connection: close` (keep-alive clients leave after their current
   request), /healthz answers 503, every WebSocket gets a close frame with code 1012.
2. Then uvicorn's shutdown: in-flight requests finish; what is still idle is closed.
"""
import asyncio
import os
import socket
import sys

import uvicorn

import app

LAME_DUCK_S = 0.5


# handoff: the middleware that carries the lame duck.
class LameDuck:
    """ASGI middleware: while draining, `Connection: close` on every response; on drain, close
    every WebSocket with 1012 (service restart: "reconnect, the service is coming back")."""

    def __init__(self, inner):
        self.inner = inner
        self.draining = False
        self.websockets = set()  # the `send` of every accepted WebSocket

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            async def send_http(message):
                if self.draining and message["type"] == "http.response.start":
                    headers = [*message.get("headers", []), (b"connection", b"close")]
                    message = {**message, "headers": headers}
                await send(message)
            return await self.inner(scope, receive, send_http)
        if scope["type"] == "websocket":
            async def send_ws(message):
                await send(message)
                if message["type"] == "websocket.accept":
                    self.websockets.add(send)
            try:
                return await self.inner(scope, receive, send_ws)
            finally:
                self.websockets.discard(send)
        return await self.inner(scope, receive, send)

    def drain(self):
        self.draining = True
        for send in list(self.websockets):
            asyncio.create_task(send({"type": "websocket.close", "code": 1012}))


# handoff: SIGTERM starts the lame duck; uvicorn's own shutdown follows LAME_DUCK_S later.
class Server(uvicorn.Server):
    def handle_exit(self, sig, frame):
        if self.should_exit or app.draining:  # a second signal, or SIGINT twice: no more delay
            return super().handle_exit(sig, frame)
        app.draining = True
        self.config.app.drain()  # the LameDuck middleware
        stop_accepting(getattr(self, "servers", []))
        asyncio.get_running_loop().call_later(LAME_DUCK_S, super().handle_exit, sig, frame)


# handoff: stop accepting at once, close the asyncio server one loop pass later.
def stop_accepting(servers):
    """Stops taking connections from the listening socket at once; on the shared socket,
    systemd's copy keeps the queue for the next instance. The server itself is closed one loop
    pass later: asyncio accepts connections in batches and attaches each to its server in the
    next pass, and attaching to a closed server fails (`Server._attach` asserts it is open), so
    `server.close()` at once would drop a connection accepted just before the signal unread
    and reset its client."""
    loop = asyncio.get_running_loop()
    for server in servers:
        for sock in server.sockets:
            loop.remove_reader(sock.fileno())  # selector loops: the accept callback
        loop.call_soon(server.close)  # after the pending accepts (call_soon is FIFO)


if __name__ == "__main__":
    # handoff: LameDuck; and asyncio's own loop, which stop_accepting relies on (with uvloop,
    # installed by uvicorn[standard], removing the reader would not stop the accepts).
    config = uvicorn.Config(LameDuck(app.app), access_log=False, loop="asyncio")
    if os.environ.get("PORT"):
        # Behind the front (strategy: proxy) the hooks set PORT: the same app on 127.0.0.1:$PORT.
        config.host, config.port = "127.0.0.1", int(os.environ["PORT"])
        Server(config).run()
    elif os.environ.get("LISTEN_FDS") != "1":
        sys.exit("serve.py: LISTEN_FDS is not 1: run it under systemd socket activation "
                 "(locally: systemd-socket-activate -l 127.0.0.1:8080 /usr/bin/python3 serve.py)")
    else:
        # handoff: socket.socket(fileno=3) finds the socket's real family (AF_INET); `--fd 3` wraps
        # it as AF_UNIX, and asyncio then never sets TCP_NODELAY on the connections it accepts.
        Server(config).run(sockets=[socket.socket(fileno=3)])
