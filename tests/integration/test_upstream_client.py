"""`app.upstream` against the real scripted LLM: keep-alive reuse, stale connections, silence and
timeouts through the batch poller, a close from another greenlet waking a blocked reader, and
`pump` (reads taken in the poller's tick)."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import gevent
import httpx
import pytest
from gevent.hub import get_hub
from gevent.server import StreamServer

from app.errors import UpstreamError
from app.upstream import SILENT, Read, UpstreamClient, UpstreamStream
from tests.metagpt_prompts import outline_prompt
from tests.procs import free_port, nginx_args, server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def payload(topic: str) -> dict[str, Any]:
    return {"model": "scripted", "messages": [{"role": "user", "content": outline_prompt(topic)}]}


def client(llm_server: str, **kwargs: Any) -> UpstreamClient:
    options = {"read_timeout": 30.0, "connect_timeout": 5.0, "retries": 0, **kwargs}
    return UpstreamClient(f"{llm_server}/v1", "k", **options)


def read_all(stream: UpstreamStream) -> tuple[str, int]:
    texts, tokens = [], 0
    while not stream.finished:
        read = stream.read(None)
        texts.append(read.text)
        tokens += read.tokens
    return "".join(texts), tokens


def run(fn: Any, *args: Any) -> Any:
    return gevent.spawn(fn, *args).get(timeout=30)


def journal(llm_server: str, topic: str) -> dict[str, Any]:
    entries = httpx.get(f"{llm_server}/_scripted/requests").json()["requests"]
    name = topic.split("[[")[0].strip()  # the journal shows the topic without its directives
    return next(e for e in reversed(entries) if (e["topic"] or "").split("[[")[0].strip() == name)


def test_a_reply_streams_whole_and_its_connection_is_reused(llm_server):
    c = client(llm_server)
    text, tokens = run(read_all, c.stream(payload("Keep-alive one")))
    assert text.startswith("{") and tokens == journal(llm_server, "Keep-alive one")["tokens_sent"]
    gevent.sleep(0.3)  # the body's end (chunked terminator) is read after [DONE]
    assert len(c._idle) == 1
    first = c._idle[0]
    text2, _ = run(read_all, c.stream(payload("Keep-alive two")))
    assert text2.startswith("{")
    gevent.sleep(0.3)
    assert c._idle == [first]  # the same connection served both
    c.close()


def test_a_connection_that_died_while_idle_is_replaced_without_a_retry(llm_server):
    c = client(llm_server, retries=0)
    run(read_all, c.stream(payload("Stale one")))
    gevent.sleep(0.3)
    (idle,) = c._idle
    idle.sock.shutdown(socket.SHUT_RDWR)  # as if the server had closed it
    text, _ = run(read_all, c.stream(payload("Stale two")))
    assert text.startswith("{")
    assert journal(llm_server, "Stale two")["outcome"] == "completed"
    c.close()


@contextmanager
def _descriptors_taken(count: int) -> Iterator[None]:
    """`count` descriptors held (/dev/null), so that the next sockets get numbers past them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < count + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(count + 256, hard), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(count)]
    try:
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_an_idle_connection_past_descriptor_1024_is_checked_then_reused_or_replaced(llm_server):
    """select() refused such a descriptor (ValueError), which a worker holding its clients' keep-alive
    connections reaches: the generation failed."""
    with _descriptors_taken(1100):
        c = client(llm_server)
        run(read_all, c.stream(payload("High descriptor one")))
        gevent.sleep(0.3)
        (idle,) = c._idle
        assert idle.fd > 1024
        assert run(read_all, c.stream(payload("High descriptor two")))[0].startswith("{")
        gevent.sleep(0.3)
        assert c._idle == [idle]  # found clean, reused
        idle.sock.shutdown(socket.SHUT_RDWR)  # as if the server had closed it
        assert run(read_all, c.stream(payload("High descriptor three")))[0].startswith("{")
        gevent.sleep(0.3)
        assert len(c._idle) == 1 and c._idle[0] is not idle  # found readable, replaced
        c.close()


def test_silence_is_reported_then_times_out(llm_server):
    topic = "Silent [[pace:50]][[fault:stall]][[after:2]][[stall:20]]"
    c = client(llm_server, read_timeout=1.5)
    stream = c.stream(payload(topic))

    def reads() -> list[Any]:
        out = []
        while True:
            try:
                out.append(stream.read(0.4))
            except UpstreamError as exc:
                out.append(exc)
                return out

    started = time.monotonic()
    out = run(reads)
    assert 1.4 < time.monotonic() - started < 4
    assert "".join(r.text for r in out[:-1] if not isinstance(r, Exception))
    assert any(getattr(r, "silent", False) for r in out[:-1])  # heartbeat time came before the timeout
    assert isinstance(out[-1], UpstreamError) and out[-1].code == "upstream_timeout"


def test_close_from_another_greenlet_wakes_the_blocked_reader(llm_server):
    topic = "Closed [[pace:50]][[fault:stall]][[after:2]][[stall:20]]"
    c = client(llm_server)
    stream = c.stream(payload(topic))

    def reader() -> BaseException | None:
        try:
            read_all(stream)
        except BaseException as exc:
            return exc
        return None

    g = gevent.spawn(reader)
    gevent.sleep(1.0)  # the two tokens came, then silence: the reader waits on the poller
    closed_at = time.monotonic()
    stream.close()
    exc = g.get(timeout=5)
    assert isinstance(exc, OSError) and not isinstance(exc, UpstreamError)
    assert time.monotonic() - closed_at < 0.5
    deadline = time.monotonic() + 5
    while journal(llm_server, topic)["outcome"] != "client_closed" and time.monotonic() < deadline:
        gevent.sleep(0.1)
    assert journal(llm_server, topic)["outcome"] == "client_closed"


def until_steady(stream: UpstreamStream) -> list[Read]:
    """Read as `Generation` does until the head is in (the first token or so): then `pump` applies."""
    reads = []
    while not stream.steady:
        reads.append(stream.read(None))
        assert not stream.finished
    return reads


def test_pump_takes_plain_reads_in_the_hub_and_wakes_only_for_the_rest(llm_server):
    topic = "Pumped [[pace:100]]"
    c = client(llm_server)
    stream = c.stream(payload(topic))
    taken: list[tuple[Read, bool]] = []

    def take(read: Read) -> Read | None:
        taken.append((read, gevent.getcurrent() is get_hub()))
        return read if read.usage is not None or stream.finished else None

    def pumped() -> tuple[list[Read], list[Read]]:
        first = until_steady(stream)
        wakes = []
        while not stream.finished:
            since = time.monotonic()
            wakes.append(stream.pump(lambda since=since: since, 5.0, take))
        return first, wakes

    first, wakes = run(pumped)
    assert len(taken) > 10 and all(in_hub for _, in_hub in taken)
    assert len(wakes) == 1 and wakes[0] is not SILENT and wakes[0].usage is not None  # the last read
    reads = first + [read for read, _ in taken]
    whole = "".join(read.text for read in reads)
    assert whole.startswith("{") and whole.rstrip().endswith("}")
    assert sum(read.tokens for read in reads) == journal(llm_server, topic)["tokens_sent"]
    c.close()


def test_pump_reports_silence_counted_from_the_last_byte_sent_and_wakes_on_close(llm_server):
    topic = "Pump silence [[pace:50]][[fault:stall]][[after:3]][[stall:20]]"
    c = client(llm_server)
    stream = c.stream(payload(topic))
    taken: list[str] = []

    def take(read: Read) -> None:
        taken.append(read.text)

    def pumped() -> tuple[Any, float, Any]:
        until_steady(stream)
        started = time.monotonic()
        silent = stream.pump(lambda: started, 0.5, take)  # nothing sent to the client since `started`
        silence = time.monotonic() - started
        now = time.monotonic()
        try:
            stream.pump(lambda: now, 30, take)
        except BaseException as exc:
            return silent, silence, exc
        return silent, silence, None

    g = gevent.spawn(pumped)
    gevent.sleep(2.0)  # the tokens came, then silence: the reader sleeps in its second pump
    closed_at = time.monotonic()
    stream.close()
    silent, silence, exc = g.get(timeout=5)
    assert silent is SILENT and 0.3 < silence < 1.5
    assert isinstance(exc, OSError) and not isinstance(exc, UpstreamError)
    assert time.monotonic() - closed_at < 0.5
    c.close()


TLS_CONF = """
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    server {{
        listen 127.0.0.1:{tls_port} ssl;
        ssl_certificate {prefix}/cert.pem;
        ssl_certificate_key {prefix}/key.pem;
        location / {{
            proxy_pass {llm};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
    server {{
        listen 127.0.0.1:{plain_port};
        location / {{ return 200 "ok"; }}
    }}
}}
"""


def test_tls_upstream_streams_and_reuses_its_connection(llm_server, tmp_path, monkeypatch, caplog):
    """An https upstream (nginx terminating TLS with a self-signed certificate the client trusts)."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", str(tmp_path / "key.pem"),
         "-out", str(tmp_path / "cert.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    tls_port, plain_port = free_port(), free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        TLS_CONF.format(prefix=tmp_path, tls_port=tls_port, plain_port=plain_port, llm=llm_server)
    )
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "cert.pem"))  # read by the default context
    health = f"http://127.0.0.1:{plain_port}/"
    with server(nginx_args(tmp_path, conf), health_url=health, log=tmp_path / "nginx.log"):
        c = UpstreamClient(f"https://localhost:{tls_port}/v1", "k", 30.0, 5.0, 0)
        text, tokens = run(read_all, c.stream(payload("Over TLS one")))
        assert text.startswith("{") and tokens == journal(llm_server, "Over TLS one")["tokens_sent"]
        gevent.sleep(0.3)
        (first,) = c._idle
        text2, _ = run(read_all, c.stream(payload("Over TLS two")))
        assert text2.startswith("{")
        gevent.sleep(0.3)
        assert c._idle == [first]
        c.close()
        # A certificate the client does not trust: said as such, and logged with what failed.
        monkeypatch.setenv("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")
        untrusting = UpstreamClient(f"https://localhost:{tls_port}/v1", "k", 30.0, 5.0, 2)
        with caplog.at_level("WARNING", logger="app.upstream.stream"), pytest.raises(UpstreamError) as info:
            run(read_all, untrusting.stream(payload("Over TLS untrusted")))
        assert "certificate could not be verified" in info.value.message
        assert "self-signed certificate" in caplog.text


def test_an_upstream_that_drips_bytes_without_text_cannot_hold_a_call_past_its_limit(llm_server):
    c = client(llm_server, max_call_seconds=1.5)
    stream = c.stream(payload("Dripping past the limit [[fault:drip]][[drip_every:0.1]][[stall:20]]"))
    started = time.monotonic()

    def until_error() -> UpstreamError:
        with pytest.raises(UpstreamError) as info:
            while True:
                assert not stream.read(5.0).text  # bytes keep coming, text never does
        return info.value

    error = run(until_error)
    assert error.code == "upstream_timeout" and "1.5 s" in error.message
    assert 1.4 < time.monotonic() - started < 4
    gevent.sleep(0.5)
    assert journal(llm_server, "Dripping past the limit")["outcome"] == "client_closed"


@contextmanager
def _raw_server(reply: bytes, after: bytes = b"") -> Iterator[str]:
    """An upstream on 127.0.0.1 that answers each request with `reply`, then, 0.2 s later, sends
    `after` too; yields its base URL."""

    def answer(conn: Any, _: Any) -> None:
        with conn:
            while conn.recv(65536):
                conn.sendall(reply)
                if after:
                    gevent.sleep(0.2)
                    conn.sendall(after)

    server = StreamServer(("127.0.0.1", 0), answer)
    server.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1"
    finally:
        server.stop(timeout=1)


def _sse_response(text: str) -> bytes:
    body = b'data: {"choices":[{"delta":{"content":"%s"}}]}\n\ndata: [DONE]\n\n' % text.encode()
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n" % len(body)
    return head + body


def test_a_page_that_is_not_an_event_stream_is_bad_output_not_an_empty_answer():
    page = b"<html><body>Welcome to the proxy</body></html>"
    reply = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n%s" % (len(page), page)
    with _raw_server(reply) as url:
        c = UpstreamClient(url, "k", 5.0, 5.0, 0)
        with pytest.raises(UpstreamError) as info:
            run(read_all, c.stream({"model": "m", "messages": []}))
        assert info.value.code == "upstream_bad_output" and "text/html" in info.value.message


def test_a_stray_reply_after_a_finished_one_never_becomes_the_next_answer():
    with _raw_server(_sse_response("ok"), after=_sse_response("STRAY")) as url:
        c = UpstreamClient(url, "k", 5.0, 5.0, 0)
        assert run(read_all, c.stream({"model": "m", "messages": []}))[0] == "ok"
        gevent.sleep(0.6)  # the stray reply has arrived on the pooled connection
        assert len(c._idle) == 1
        assert run(read_all, c.stream({"model": "m", "messages": []}))[0] == "ok"  # on a fresh connection


def test_a_reply_past_its_byte_limit_or_with_an_endless_line_is_refused(llm_server):
    c = client(llm_server, max_reply_bytes=2000)
    with pytest.raises(UpstreamError) as info:
        run(read_all, c.stream(payload("Too long a reply [[pace:0]]")))
    assert info.value.code == "upstream_bad_output" and "2000 bytes" in info.value.message
    line = b"data: " + b"x" * 5000
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n" % len(line)
    with _raw_server(head + line) as url:
        with pytest.raises(UpstreamError) as info:
            run(read_all, UpstreamClient(url, "k", 5.0, 5.0, 0, max_line_bytes=1000).stream({"messages": []}))
        assert info.value.code == "upstream_bad_output" and "1000 bytes" in info.value.message
