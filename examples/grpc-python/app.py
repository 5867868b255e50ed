"""A gRPC server for the handoff hooks' proxy mode: Debian's python3-grpcio, no generated code.

It listens on 127.0.0.1:$PORT, the port the hooks give the release; the front holds the
service's socket and speaks HTTP/2 to it (deploy.yml front.upstream: h2c).

/shop.Echo/Say                 unary: answers "<RELEASE>:<request>"
/shop.Echo/Count               server streaming: the request is a number N (ASCII); answers N
                               messages "<RELEASE> <i>", 100 ms apart
/grpc.health.v1.Health/Check   SERVING (the hooks' probes: deploy.yml health.protocol: grpc)

Messages are raw bytes: with no serializer, grpcio passes them through, so the example needs
no .proto and no protoc. A real service registers its generated servicers the same way.
"""
import os
import signal
import sys
import threading
import time
from concurrent import futures

import grpc

RELEASE = os.environ.get("RELEASE", "dev").encode()
# The gRPC health check's answer: HealthCheckResponse{status: SERVING}, field 1 = 1.
SERVING = b"\x08\x01"


def say(request, context):
    return RELEASE + b":" + request


def count(request, context):
    for i in range(int(request or b"1")):
        if i:
            time.sleep(0.1)
        yield RELEASE + b" " + str(i).encode()


def check(request, context):
    return SERVING


def main():
    port = os.environ["PORT"]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "shop.Echo",
                {
                    "Say": grpc.unary_unary_rpc_method_handler(say),
                    "Count": grpc.unary_stream_rpc_method_handler(count),
                },
            ),
            grpc.method_handlers_generic_handler(
                "grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(check)}
            ),
        )
    )
    # Loopback only: clients come through the front.
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(f"release {RELEASE.decode()} serving gRPC on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    stopped = threading.Event()

    def on_term(signum, frame):
        # By SIGTERM the front has drained this release (no call in flight); stop at once,
        # giving any straggler 5 s.
        server.stop(5).wait()
        stopped.set()

    signal.signal(signal.SIGTERM, on_term)
    while not stopped.wait(1):
        pass


if __name__ == "__main__":
    main()
