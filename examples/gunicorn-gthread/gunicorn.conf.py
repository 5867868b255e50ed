# gunicorn reads ./gunicorn.conf.py from its working directory: the release folder.
#
# handoff: a lame duck for gthread workers. By itself, a gthread worker that gets SIGTERM
# (the master forwards it on a graceful stop) leaves its loop at once and exits without
# answering what arrives on its idle keep-alive connections: a client that sends its next
# request on one of them at that moment (wrk, most HTTP libraries: no retry) gets an error.
# With the two hooks below, SIGTERM starts a lame duck instead: for LAME_DUCK_S every
# response says `Connection: close` (keep-alive clients leave after their current request
# and reconnect, landing on the new instance); then gunicorn's own
# graceful stop runs (in-flight requests finish, the worker exits).
import signal
import threading

LAME_DUCK_S = 0.5


def post_worker_init(worker):
    # handoff: replace the worker's SIGTERM handler (which stops it at once).
    worker.draining = False

    def on_sigterm(sig, frame):
        if worker.draining:
            return
        worker.draining = True
        threading.Timer(LAME_DUCK_S, worker.handle_exit, (sig, frame)).start()

    signal.signal(signal.SIGTERM, on_sigterm)


def pre_request(worker, req):
    # handoff: `Connection: close` on every response whose headers are written once the drain
    # has begun, including requests already running when SIGTERM came. An app cannot set it:
    # gunicorn drops hop-by-hop headers from WSGI responses. gunicorn asks should_close() when
    # it writes the headers and again after the body; the answer is fixed at the first call,
    # or a response sent as keep-alive just before SIGTERM would have its connection closed
    # under the client's next request.
    default = req.should_close
    decided = []

    def should_close():
        if not decided:
            decided.append(worker.draining or default())
        return decided[0]

    req.should_close = should_close
