"""`SocketBody`: events written straight to gunicorn's gevent socket, framed as gunicorn frames them."""

from __future__ import annotations

import gevent
import gevent.event
import gevent.socket
import pytest
from gevent.hub import get_hub

from app.transport.socket_body import SOCKET_BODY_KEY, SocketBody


@pytest.fixture
def pair():
    a, b = gevent.socket.socketpair()
    yield a, b
    a.close()
    b.close()


def _read_all(sock, size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        data = sock.recv(65536)
        if not data:
            break
        out += data
    return bytes(out)


def test_only_for_http1_requests_the_gateway_worker_marked(pair):
    sock = pair[0]
    base = {"gunicorn.socket": sock, SOCKET_BODY_KEY: True}
    assert SocketBody.of({**base, "SERVER_PROTOCOL": "HTTP/1.1"}) is not None
    assert SocketBody.of({**base, "SERVER_PROTOCOL": "HTTP/1.0"}) is not None
    assert SocketBody.of({**base, "SERVER_PROTOCOL": "HTTP/2"}) is None  # the socket carries frames
    unmarked = {"gunicorn.socket": sock, "SERVER_PROTOCOL": "HTTP/1.1"}  # another worker, or uwsgi
    assert SocketBody.of(unmarked) is None
    assert SocketBody.of({SOCKET_BODY_KEY: True, "SERVER_PROTOCOL": "HTTP/1.1"}) is None  # test client


def _more_than_buffers_hold() -> tuple[list[bytes], bytes]:
    """~4 MB of events, and the chunked body they make on the wire."""
    events = [b"data: %d %s\n\n" % (i, b"z" * 1000) for i in range(4000)]
    return events, b"".join(b"%X\r\n%b\r\n" % (len(e), e) for e in events)


def _in_hub(fn, *args):
    """`fn(*args)` as the poller's tick runs it: in the hub, where waiting raises."""
    result = gevent.event.AsyncResult()

    def call() -> None:
        try:
            result.set(fn(*args))
        except BaseException as exc:
            result.set_exception(exc)

    get_hub().loop.run_callback(call)
    return result.get(timeout=10)


def test_http11_events_are_chunks_http10_events_are_raw(pair):
    a, b = pair
    SocketBody(a, chunked=True).write(b"data: x\n\n")
    assert _read_all(b, 14) == b"9\r\ndata: x\n\n\r\n"
    event = b"data: " + b"y" * 300 + b"\n\n"
    SocketBody(a, chunked=True).write(event)
    assert _read_all(b, 3 + 2 + len(event) + 2) == b"134\r\n" + event + b"\r\n"  # hex size, like gunicorn
    SocketBody(a, chunked=False).write(b"data: z\n\n")
    assert _read_all(b, 9) == b"data: z\n\n"


def test_a_client_that_does_not_keep_up_gets_every_byte_in_order(pair):
    """Far more than the socket buffers hold: the non-blocking send is partial, sendall waits for
    the reader (cooperatively) and the rest arrives intact."""
    a, b = pair
    events, expected = _more_than_buffers_hold()
    body = SocketBody(a, chunked=True)

    def slow_reader() -> bytes:
        gevent.sleep(0.2)  # the writer fills the buffers meanwhile
        return _read_all(b, len(expected))

    reader = gevent.spawn(slow_reader)
    for event in events:
        body.write(event)
    assert reader.get(timeout=30) == expected


def test_a_closed_peer_is_an_oserror_from_write_or_from_the_flush_after_send_now(pair):
    a, b = pair
    b.close()
    body = SocketBody(a, chunked=True)
    with pytest.raises(OSError):
        for _ in range(100):  # the first send may still succeed; a later one fails
            body.write(b"data: x\n\n")
    assert not all(_in_hub(lambda: [body.send_now(b"data: x\n\n") for _ in range(100)]))
    with pytest.raises(OSError):
        body.flush()
    body.flush()  # raised once: nothing is left


def test_send_now_never_waits_and_leaves_the_rest_for_flush_in_order(pair):
    a, b = pair
    events, expected = _more_than_buffers_hold()
    body = SocketBody(a, chunked=True)
    assert body.immediate
    sent = _in_hub(lambda: [body.send_now(e) for e in events[:3000]])
    assert sent[0] and not sent[-1]  # the buffers filled: what did not go waits for flush
    assert not any(sent[sent.index(False) :])  # nothing jumps the queue once something waits
    reader = gevent.spawn(_read_all, b, len(expected))
    body.flush()  # in this greenlet: waits for the reader
    for event in events[3000:]:
        body.write(event)
    assert reader.get(timeout=30) == expected
