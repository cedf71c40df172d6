"""Hostile HTTP at every endpoint and method, as raw bytes: through nginx and straight to gunicorn, with
and without API keys. Lone surrogates and invalid UTF-8 anywhere, integers past 64 bits, NaN, deep
nesting, wrong types, bad chunk sizes, odd request lines and headers, and bodies that pass validation
and fail afterwards (upstream faults). What must hold: no 5xx but the upstream's own faults, OpenAI's
JSON error object on every error, every admission given back (the gauge at 0 and the whole capacity
admitted again afterwards), and no worker restarted or traceback logged."""

from __future__ import annotations

import json
import random
import re
import socket
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import Proxied, gateway_behind_nginx
from tests.integration.helpers import hold_stream, metric, settle

pytestmark = pytest.mark.integration

KEY = "sk-fuzz-0123456789"
WORKERS = 2
PER_WORKER = 6  # small, so that a leaked admission would show as a 429 in the check at the end
SENDERS = 4  # concurrent clients: below the capacity, so that every 429 is a leak or a background run
CASES = 900  # per target (four targets with keys, two without)
SEED = 29
# What the upstream's own faults become, and the two 5xx that HTTP defines as the client's doing (a
# transfer coding or an HTTP version the server does not speak): the only 5xx allowed.
CLIENTS_5XX_CODES = {"not_implemented", "http_version_not_supported"}


def upstreams(code: str | None) -> bool:
    return code is not None and (code.startswith("upstream_") or code == "generation_timeout")


TOPIC = "Fuzzing [[pace:0]][[sections:1]][[section_chars:40]]"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    raw: bytes
    whole: bool = True  # the body is as long as the head said


def exchange(port: int, request: bytes, half_close: bool = False, timeout: float = 30) -> Reply:
    """Send `request` as it is, read until the server closes; status 0 when nothing came back."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(request)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server answered and closed before taking the whole request: read its answer
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            chunks.append(data)
        else:
            raise AssertionError(f"no end of reply in {timeout} s: {request[:300]!r}")
    raw = b"".join(chunks)
    if not raw:
        return Reply(0, {}, b"", raw)
    rest = raw
    while True:  # past interim answers (100 Continue)
        head, _, rest = rest.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        match = re.match(r"HTTP/1\.[01] (\d{3})", lines[0])
        assert match, (request[:300], raw[:300])
        if not match.group(1).startswith("1"):
            break
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    whole = True
    if headers.get("transfer-encoding") == "chunked":
        rest, whole = dechunk(rest)
    elif "content-length" in headers and not request.startswith(b"HEAD "):  # HEAD: the length, no body
        whole = len(rest) >= int(headers["content-length"])
    return Reply(int(match.group(1)), headers, rest, raw, whole)


def dechunk(data: bytes) -> tuple[bytes, bool]:
    """The body, and whether its last chunk came."""
    out = []
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return b"".join(out), True
        out.append(data[:size])
        data = data[size + 2 :]
    return b"".join(out), False


# -- the cases ---------------------------------------------------------------------------------------

HOSTILE_STRINGS = [
    "\ud800",
    "\udfff",
    "x\udc00y",
    "\x00",
    "\u202e\u0000\ufeff",
    "\U0001f600",
    "",
    " ",
    "### Task:\nSuggest a title\ud800",
    "x" * 70_000,
    "[[fault:http500]]",
    "[[fault:cut]][[after:2]][[pace:0]]",
    "[[fault:http429]]",
    "%00%ff../../etc/passwd",
    "<script>alert(1)</script>",
]
HOSTILE_VALUES = [
    2**64,
    -(2**64),
    2**63,
    10**30,
    -1,
    0,
    1.5,
    True,
    None,
    [],
    {},
    [[[[[[[[[[[]]]]]]]]]]],
    {"\ud800": "\ud800"},
]
RAW_VALUES = [
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"1e400",
    b'"\xed\xa0\x80"',
    b'"\xff\xfe"',
    b"01",
    b"[" * 2000,
]


def chat_body(rng: random.Random) -> dict:
    body = {"model": "write_tutorial", "messages": [{"role": "user", "content": TOPIC}]}
    if rng.random() < 0.5:
        body["stream"] = True
        if rng.random() < 0.5:
            body["stream_options"] = {"include_usage": True}
    if rng.random() < 0.2:  # a chat UI's housekeeping request, relayed as it is
        body["messages"] = [{"role": "user", "content": "### Task:\nSuggest a title. [[pace:0]]"}]
        body["max_tokens"] = 16
    if rng.random() < 0.1:
        body["model"] = "write_teaching_plan"
    return body


def responses_body(rng: random.Random) -> dict:
    body: dict = {"model": "write_tutorial", "input": TOPIC}
    roll = rng.random()
    if roll < 0.3:
        body["background"] = True
    if rng.random() < 0.5:
        body["stream"] = True
    if rng.random() < 0.2:
        body["store"] = False
    if rng.random() < 0.5:
        body["metadata"] = {"k": "v"}
    if rng.random() < 0.2:
        body["input"] = [{"role": "user", "content": [{"type": "input_text", "text": TOPIC}]}]
    return body


def leaves(value: object, path: tuple = ()) -> Iterator[tuple]:
    yield path
    if isinstance(value, dict):
        for k, v in value.items():
            yield from leaves(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from leaves(v, (*path, i))


def mutate(body: dict, rng: random.Random) -> bytes:
    """`body` with one or two of its values (or keys) made hostile, as JSON bytes."""
    marker = None
    for _ in range(rng.choice((1, 1, 2))):
        path = rng.choice([p for p in leaves(body) if p])
        parent = body
        for part in path[:-1]:
            parent = parent[part]
        roll = rng.random()
        if roll < 0.45:
            parent[path[-1]] = rng.choice(HOSTILE_STRINGS)
        elif roll < 0.75:
            parent[path[-1]] = rng.choice(HOSTILE_VALUES)
        elif roll < 0.85 and isinstance(parent, dict):
            del parent[path[-1]]
        elif roll < 0.9 and isinstance(parent, dict):
            parent[rng.choice(HOSTILE_STRINGS[:3])] = 1  # a hostile key
        else:
            marker = "\x01RAW\x01"
            parent[path[-1]] = marker
    for name in ("max_tokens", "max_output_tokens", "max_completion_tokens", "temperature"):
        if rng.random() < 0.05:
            body[name] = rng.choice(HOSTILE_VALUES)
    raw = json.dumps(body).encode()  # ensure_ascii: a lone surrogate goes out as its \\u escape
    if marker is not None:
        raw = raw.replace(json.dumps(marker).encode(), rng.choice(RAW_VALUES))
    if rng.random() < 0.05:
        raw = raw[: rng.randrange(len(raw))]
    return raw


PATHS = [
    "/v1/chat/completions",
    "/v1/responses",
    "/v1/responses/resp_0123",
    "/v1/responses/resp_0123?stream=true&starting_after=99999999999999999999",
    "/v1/responses/resp_0123?stream=true&starting_after=%ff",
    "/v1/responses/resp_%ED%A0%80",
    "/v1/responses/resp_0123/cancel",
    "/v1/models",
    "/v1/models/write_tutorial",
    "/v1/embeddings",
    "/healthz",
    "/readyz",
    "/openapi.json",
    "/metrics",
    "/auth/check",
    "/download/x-0123456789abcdef0123456789abcdef.md",
    "/download/x-0123456789abcdef0123456789abcdef.md?expires=99999999999999999999&signature=%ff",
    "/download/../../etc/passwd",
    "/",
    "/studio/index.html",
    "/studio/../app/settings.py",
    "/%00",
    "/%ED%A0%80",
    "/\xff",
]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "FOO"]


def auth_header(rng: random.Random, keyed: bool) -> bytes:
    roll = rng.random()
    if roll < (0.6 if keyed else 0.3):
        return f"Authorization: Bearer {KEY}\r\n".encode()
    if roll < 0.7:
        return b""
    return rng.choice(
        [
            b"Authorization: Bearer wrong\r\n",
            b"Authorization: Bearer \xff\xfe\xed\xa0\x80\r\n",
            f"Authorization: Bearer {KEY}|{KEY},\r\n".encode(),
            f"Authorization: bearer {KEY}\r\n".encode(),
            b"Authorization: Basic Zm9vOmJhcg==\r\n",
            b"Authorization: Bearer \r\n",
            f"Authorization: Bearer {KEY}\r\nAuthorization: Bearer wrong\r\n".encode(),
            b"Authorization: " + b"A" * 9000 + b"\r\n",
        ]
    )


def case(rng: random.Random, keyed: bool) -> tuple[bytes, bool]:
    """One request's bytes, and whether it is cut short (the client then half-closes after sending it:
    a server may answer, or see a client that left)."""
    auth = auth_header(rng, keyed)
    roll = rng.random()
    if roll < 0.55:  # a JSON body at one of the two APIs
        path = rng.choice(["/v1/chat/completions", "/v1/responses"])
        body = chat_body(rng) if path.endswith("completions") else responses_body(rng)
        raw = mutate(body, rng) if rng.random() < 0.85 else json.dumps(body).encode()
        ctype = rng.choice(
            [b"application/json"] * 8
            + [b"application/json; charset=latin-1", b"text/plain", b"application/\xff"]
        )
        if rng.random() < 0.15:  # chunked, sometimes with a bad chunk size or cut short
            whole = b"%x\r\n%s\r\n0\r\n\r\n" % (len(raw), raw)
            chunked = rng.choice([whole, b"zz\r\n" + raw + b"\r\n0\r\n\r\n", whole[:-5], b"-1\r\n\r\n"])
            head = b"POST %s HTTP/1.1\r\nHost: fuzz\r\nTransfer-Encoding: chunked\r\n" % path.encode()
            head += b"Content-Type: " + ctype + b"\r\n" + auth + b"Connection: close\r\n\r\n"
            return head + chunked, chunked == whole[:-5]
        length = len(raw) + rng.choice([0] * 9 + [5])  # now and then a body shorter than it says
        head = b"POST %s HTTP/1.1\r\nHost: fuzz\r\nContent-Length: %d\r\n" % (path.encode(), length)
        head += b"Content-Type: " + ctype + b"\r\n" + auth + b"Connection: close\r\n\r\n"
        return head + raw, length > len(raw)
    if roll < 0.9:  # any endpoint, any method
        method = rng.choice(METHODS).encode()
        path = rng.choice(PATHS).encode("latin-1")
        body = b"" if rng.random() < 0.6 else b'{"x": "\\ud800"}'
        head = b"%s %s HTTP/1.1\r\nHost: fuzz\r\n" % (method, path)
        if body:
            head += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
        return head + auth + b"Connection: close\r\n\r\n" + body, False
    line = rng.choice(  # the request line and headers themselves
        [
            b"GET /v1/models HTTP/9.9\r\n",
            b"GET /v1/models HTTP/1.0\r\n",
            b"GET /v1/models HTTP/1.1 extra\r\n",
            b"GET http://fuzz/v1/models HTTP/1.1\r\n",
            b"G\x00T /v1/models HTTP/1.1\r\n",
            b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n",
            b"POST /download/x-0123456789abcdef0123456789abcdef.md HTTP/1.1\r\n",
            b"GET /v1/models\xff HTTP/1.1\r\n",
        ]
    )
    extra = rng.choice(
        [
            b"",
            b"X-Forwarded-Host: \xff\xed\xa0\x80\r\n",
            b"X-Forwarded-Proto: gopher\r\n",
            b"Header without colon\r\n",
            b"X-Big: " + b"b" * 20000 + b"\r\n",
            b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            b"Content-Length: -1\r\n",
            b"Expect: 100-continue\r\n",
            b"Range: bytes=999999-\r\n",
            b'If-Match: "nope"\r\n',
        ]
    )
    short = extra.startswith(b"Content-Length: 5")
    return line + b"Host: fuzz\r\n" + extra + auth + b"Connection: close\r\n\r\n", short


# -- the checks --------------------------------------------------------------------------------------


def check(request: bytes, cut: bool, reply: Reply, problems: list[str], unanswered: list[bytes]) -> None:
    def problem(what: str) -> None:
        problems.append(f"{what}: {request[:200]!r} -> {reply.raw[:300]!r}")

    if reply.status == 0 or not reply.whole:  # cut off: right for a request cut short, else counted
        if not cut:
            unanswered.append(request[:200])
        return
    head_request = request.startswith(b"HEAD ")
    if reply.status >= 400 and not head_request:
        if not reply.headers.get("content-type", "").startswith("application/json"):
            return problem("an error that is not JSON")
        try:
            error = json.loads(reply.body)["error"]
        except (ValueError, KeyError, TypeError):
            return problem("an error body that is not OpenAI's error object")
        if set(error) != {"message", "type", "param", "code"} or not error["message"]:
            return problem("an error object with other fields")
        if reply.status >= 500 and not (upstreams(error["code"]) or error["code"] in CLIENTS_5XX_CODES):
            return problem(f"a {reply.status} that is not the upstream's fault")
    if reply.status == 200 and reply.headers.get("content-type", "").startswith("text/event-stream"):
        for event in reply.body.split(b"\n\n"):
            for line in event.split(b"\n"):
                if not line.startswith(b"data: {"):
                    continue
                data = json.loads(line[6:])
                if data.get("type") == "error":  # the Responses API's error event
                    code = data.get("code")
                elif isinstance(data.get("error"), dict) and "choices" not in data:  # chat's error chunk
                    code = data["error"].get("code")
                else:
                    continue
                if not code:
                    problem("an error event without a code")
                elif not upstreams(code):
                    problem(f"an error event {code}")
        if b"/v1/chat/completions" in request.split(b"\r\n")[0] and b"data: [DONE]" not in reply.body:
            problem("a chat stream without [DONE]")


def campaign(port: int, keyed: bool, seed: int) -> tuple[Counter, list[str], list[bytes]]:
    rng = random.Random(seed)
    cases = [case(rng, keyed) for _ in range(CASES)]
    statuses: Counter = Counter()
    problems: list[str] = []
    unanswered: list[bytes] = []

    def run(item: tuple[bytes, bool]) -> None:
        request, half_close = item
        reply = exchange(port, request, half_close)
        statuses[reply.status] += 1
        check(request, half_close, reply, problems, unanswered)

    with ThreadPoolExecutor(SENDERS) as pool:
        list(pool.map(run, cases))
    return statuses, problems, unanswered


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def whole_capacity_admitted(proxied: Proxied, headers: dict[str, str]) -> list[int]:
    """Every place of the capacity taken at once by a slow stream: all 200 when nothing leaked."""
    with ExitStack() as held, httpx.Client(timeout=30) as client:
        return [
            hold_stream(client, proxied.url, "Held [[pace:5]]", held, headers).status_code
            for _ in range(WORKERS * PER_WORKER)
        ]


def workers_booted(log: Path) -> int:
    return log.read_text(errors="replace").count("Booting worker with pid")


@pytest.mark.parametrize("keys", [True, False], ids=["with-keys", "without-keys"])
def test_hostile_requests_get_openai_errors_and_give_back_every_admission(llm_server, tmp_path, keys):
    env = {
        "GATEWAY_MAX_GENERATIONS_PER_WORKER": str(PER_WORKER),
        "GATEWAY_MAX_GENERATION_SECONDS": "60",
    }
    if keys:
        env["GATEWAY_API_KEYS"] = KEY
    with gateway_behind_nginx(llm_server, tmp_path, env, workers=WORKERS) as proxied:
        app = proxied.app
        targets = [(port_of(proxied.url), keyed) for keyed in ((True, False) if keys else (False,))]
        targets += [(port_of(app.url), keyed) for keyed in ((True, False) if keys else (False,))]
        totals: Counter = Counter()
        problems: list[str] = []
        unanswered: list[bytes] = []
        for n, (port, keyed) in enumerate(targets):
            statuses, found, silent = campaign(port, keyed, SEED + n)
            totals.update(statuses)
            problems += found
            unanswered += [b"%d: %s" % (port, request) for request in silent]
        assert not problems, f"{len(problems)} problems, e.g.:\n" + "\n".join(problems[:15])
        assert not unanswered, unanswered[:20]  # every whole request is answered
        admitted = sum(totals[s] for s in (200, 201))
        assert admitted > 100 and totals[400] > 200, totals  # the fuzz reached past validation, and not

        # Every admission was given back: nothing runs, and the whole capacity is admitted again.
        assert settle(app.url, "gateway_responses_background", 0, timeout=60) == 0
        assert settle(app.url, "gateway_active_generations", 0, timeout=30) == 0
        headers = {"Authorization": f"Bearer {KEY}"} if keys else {}
        assert whole_capacity_admitted(proxied, headers) == [200] * (WORKERS * PER_WORKER)
        assert settle(app.url, "gateway_active_generations", 0, timeout=30) == 0
        assert metric(app.url, "gateway_asyncio_tasks") == 0
        log = app.log.read_text(errors="replace")
        assert workers_booted(app.log) == WORKERS, "a worker was restarted"
        assert "Traceback" not in log and "unhandled error" not in log, log[-3000:]
