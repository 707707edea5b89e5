"""A reward server (``slas_jax.rewards.serve``'s uvicorn server) on 127.0.0.1 in a thread, for tests."""

import contextlib
import threading
import time

from slas_jax.rewards.serve import listen, make_server, serve


@contextlib.contextmanager
def served(app, max_requests=100, max_seconds=60.0):
    """``app`` on a free port of 127.0.0.1 in a thread, for at most ``max_requests`` requests and
    ``max_seconds``; yields its URL and stops it on exit."""
    sock = listen("127.0.0.1", 0)
    server = make_server(app, max_requests)
    thread = threading.Thread(target=serve, args=(server, sock, max_seconds), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
