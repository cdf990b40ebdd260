"""Schemathesis hooks for tests/openapi.sh (loaded through SCHEMATHESIS_HOOKS).

Two of hedgehog's answers never end by themselves, which a request/response
tester cannot take: a WebSocket upgrade (101) and a stream of a pair
(`GET /api/v1/subscribe/{pair}` without a client id). Cases that would open
one are turned into their nearest finite neighbour (a spoiled WebSocket key,
400; the same request naming a client, JSON); tests/openapi.sh checks the
101 and both stream forms itself.

With HEDGEHOG_BAD_KEYS set (access control on), a tenth of the requests
carry a key that nobody holds: 401 and its `WWW-Authenticate` challenge.

And a made-up client id is only ever 404 `unknown_client` (or 421 `wrong_node`,
when it names a node): so that the 200s of
the REST API are exercised too, this module holds one real WebSocket client of
the relay and puts its id into half of the positive cases that name a client.
"""

import base64
import os
import itertools
import re
import socket
import threading

import schemathesis

ADDR = os.environ["HEDGEHOG_ADDR"]
BAD_KEYS = bool(os.environ.get("HEDGEHOG_BAD_KEYS"))
CLIENT_ID_FORM = re.compile(r"(?:[a-z0-9_]{1,16}\.)?[0-9a-f]{1,16}-[0-9a-f]{1,16}-[0-9a-f]{32}")
CLIENT_ROUTES = {"/api/v1/subscribe", "/api/v1/subscribe/{pair}"}


def _websocket_client(addr):
    """A WebSocket client of the relay, drained by a thread; its client id."""
    host, port = addr.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=20)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    buf = b""
    while b'"client_id":"' not in buf or not buf.split(b'"client_id":"', 1)[1].count(b'"'):
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError(f"the relay closed the WebSocket: {buf!r}")
        buf += chunk
    assert buf.startswith(b"HTTP/1.1 101 "), buf
    client_id = buf.split(b'"client_id":"', 1)[1].split(b'"', 1)[0].decode()
    sock.settimeout(None)
    # Read (and drop) what the relay sends, so that the client is never a slow consumer.
    threading.Thread(target=lambda: [None for _ in iter(lambda: sock.recv(65536), b"")], daemon=True).start()
    return sock, client_id


_SOCK, CLIENT_ID = _websocket_client(ADDR)
# Turns rather than random draws: hypothesis owns randomness during a run.
_BAD_KEY_TURN, _LIVE_ID_TURN = itertools.count(), itertools.count()


def _is_negative(case):
    meta = getattr(case, "meta", None)
    return meta is not None and meta.generation.mode.is_negative


@schemathesis.hook
def before_call(context, case, kwargs):
    path, method = case.operation.path, case.operation.method.upper()
    headers = case.headers
    # Never complete a WebSocket handshake: the 101 would leave the tester waiting.
    for name in list(headers or {}):
        if name.lower() == "sec-websocket-key":
            headers[name] = "spoiled" + str(headers[name])[:8]
    # With access control on: a key nobody holds, on a tenth of the requests.
    if BAD_KEYS and next(_BAD_KEY_TURN) % 10 == 0:
        headers["Authorization"] = "Bearer hh_" + "0" * 64
    if path not in CLIENT_ROUTES:
        return
    query = case.query if case.query is not None else {}
    names_client = any(n.lower() == "x-client-id" for n in headers) or "client_id" in query
    if method == "GET" and path == "/api/v1/subscribe/{pair}" and not names_client:
        # The stream form (no client id) never ends: name the live client instead.
        headers["X-Client-Id"] = CLIENT_ID
    elif not _is_negative(case) and next(_LIVE_ID_TURN) % 2 == 0:
        # Both places, since the header wins over `?client_id=`.
        for name in [n for n in headers if n.lower() == "x-client-id"]:
            del headers[name]
        headers["X-Client-Id"] = CLIENT_ID
        if "client_id" in query:
            query["client_id"] = CLIENT_ID
    # The header wins over `?client_id=`, so a malformed `?client_id=` beside a
    # good header is rightly ignored; schemathesis would call that accepting bad
    # input (and cases it derives from one edited here may carry our header).
    if "client_id" in query and not CLIENT_ID_FORM.fullmatch(str(query["client_id"])):
        for name in [n for n in headers if n.lower() == "x-client-id"]:
            del headers[name]
