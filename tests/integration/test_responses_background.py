"""Background responses over raw HTTP (issue 21): a generation that outlives its connection, re-attached
from another gunicorn server that shares the response store's folder; cancel and DELETE stop the
upstream call within seconds (the scripted LLM's journal); a non-background stream still cancels on
disconnect; ids, keys, expiry and the metrics. The SDK's own resume is in test_responses_clients."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Proxied, Stack, gateway_behind_nginx
from tests.integration.helpers import metric, settle, split_link
from tests.integration.test_disconnect import wait_outcome
from tests.integration.test_responses_clients import check_events

pytestmark = pytest.mark.integration

KEY = "background-test-key-0123456789"
TTL_SECONDS = 2
UNKNOWN = "resp_" + "0" * 48
SLOW = "[[pace:5]][[sections:6]]"  # an outline of about a minute: whatever stops it, stops it early


@dataclass
class Pair:
    """Two gunicorn servers (2 workers and 1) whose response stores are one folder: what one runs, the
    other serves, as another worker of the same host would."""

    main: Proxied
    peer: Proxied


@pytest.fixture(scope="module")
def pair(llm_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    main_folder, peer_folder = tmp_path_factory.mktemp("main"), tmp_path_factory.mktemp("peer")
    (main_folder / "responses").mkdir()
    (peer_folder / "responses").symlink_to(main_folder / "responses")
    with ExitStack() as servers:
        main = servers.enter_context(gateway_behind_nginx(llm_server, main_folder, {}, workers=2))
        peer = servers.enter_context(gateway_behind_nginx(llm_server, peer_folder, {}, workers=1))
        yield Pair(main, peer)


@pytest.fixture(scope="module")
def keyed(llm_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxied]:
    env = {"GATEWAY_API_KEYS": KEY, "GATEWAY_RESPONSES_TTL_SECONDS": str(TTL_SECONDS)}
    with gateway_behind_nginx(llm_server, tmp_path_factory.mktemp("keyed"), env) as proxied:
        yield proxied


# --- helpers ----------------------------------------------------------------------------------------


def request(topic: str, **fields: Any) -> dict[str, Any]:
    return {"model": "write_tutorial", "input": topic, **fields}


def sse(chunks: Iterator[bytes]) -> Iterator[dict[str, Any]]:
    """The events of a Responses stream as they arrive (comments skipped); each block's `event:` name
    is its data's type."""
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            lines = [line for line in block.split(b"\n") if not line.startswith(b":")]
            if not lines:
                continue
            assert len(lines) == 2 and lines[0].startswith(b"event: ") and lines[1].startswith(b"data: "), (
                block
            )
            data = json.loads(lines[1][len(b"data: ") :])
            assert data["type"] == lines[0][len(b"event: ") :].decode()
            yield data
    assert not buffer.strip(), f"the stream ended inside an event: {buffer[:200]!r}"


def read(client: httpx.Client, method: str, url: str, stop: int | None = None, **kw: Any) -> list[dict]:
    """The events of a streamed answer: all of them, or the first `stop` and then hang up."""
    events: list[dict[str, Any]] = []
    with client.stream(method, url, timeout=30, **kw) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for event in sse(r.iter_raw()):
            events.append(event)
            if len(events) == stop:
                break  # leaving the block closes the connection mid-stream
    return events


def attach(client: httpx.Client, base: str, rid: str, after: int | None = None, **kw: Any) -> list[dict]:
    query = "stream=true" if after is None else f"stream=true&starting_after={after}"
    return read(client, "GET", f"{base}/v1/responses/{rid}?{query}", **kw)


def error_of(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = r.json()["error"]
    assert error["message"] and error["type"]
    return error


def wait_running(stack: Stack, topic: str) -> None:
    """Until the scripted LLM is answering a request about `topic`."""
    deadline = time.monotonic() + 10
    while not any(e["topic"] == topic and e["outcome"] == "running" for e in stack.journal()):
        assert time.monotonic() < deadline, f"no upstream request for {topic!r}"
        time.sleep(0.05)


def closed_early(stack: Stack, topic: str) -> float:
    """The upstream request about `topic` was closed (not finished); how long that took to be seen."""
    entries, waited = wait_outcome(stack, topic, timeout=8)
    assert [e["outcome"] for e in entries] == ["client_closed"], entries
    assert all(e["kind"] == "outline" for e in entries)  # and no section request started after it
    return waited


def finished(client: httpx.Client, base: str, rid: str, headers: dict[str, str]) -> dict[str, Any]:
    """The response once it has ended."""
    deadline = time.monotonic() + 30
    while (r := client.get(f"{base}/v1/responses/{rid}", headers=headers).json())["status"] == "in_progress":
        assert time.monotonic() < deadline, r
        time.sleep(0.1)
    return r


# --- a: resumed on another server -------------------------------------------------------------------


def test_a_background_stream_dropped_midway_resumes_on_another_server_whole(pair):
    """Start on the first server (2 workers) through nginx, hang up in the outline, re-attach on the
    second server (another process, the same folder) from the last sequence number seen: the two
    connections together are the whole response, every event once."""
    with httpx.Client() as client:
        body = request("Resumed elsewhere [[sections:2]][[pace:100]]", background=True, stream=True)
        first = read(client, "POST", f"{pair.main.url}/v1/responses", stop=6, json=body)
        rid, last = first[0]["response"]["id"], first[-1]["sequence_number"]
        assert first[0]["response"]["background"] is True
        assert client.get(f"{pair.main.app.url}/v1/responses/{rid}").json()["status"] == "in_progress"
        rest = attach(client, pair.peer.app.url, rid, after=last)
        assert rest[0]["sequence_number"] == last + 1 and rest[-1]["type"] == "response.completed"
        final = check_events(first + rest)  # numbered 0..n-1, in order, the text is the downloaded file
        for base in (pair.main.url, pair.peer.app.url):
            stored = client.get(f"{base}/v1/responses/{rid}").json()
            assert stored["status"] == "completed" and stored["output"] == final["output"]
            assert stored["file"] == stored["tutorial"] == final["file"]
        tutorial, _ = split_link(final["output"][1]["content"][0]["text"])
        assert client.get(final["file"]["url"]).content == tutorial.encode()


# --- b: unattended --------------------------------------------------------------------------------


def test_a_background_response_goes_on_with_no_one_attached(pair):
    """Hang up right after response.created: the object grows while no one reads, the upstream calls
    all finish, and the stored events replay as the whole response."""
    topic = "Unattended"
    with httpx.Client() as client:
        body = request(f"{topic} [[sections:2]][[pace:60]]", background=True, stream=True)
        [created] = read(client, "POST", f"{pair.main.url}/v1/responses", stop=1, json=body)
        assert created["type"] == "response.created"
        rid = created["response"]["id"]
        seen: list[tuple[str, int]] = []
        deadline = time.monotonic() + 30
        while not seen or seen[-1][0] == "in_progress":
            assert time.monotonic() < deadline, seen[-3:]
            r = client.get(f"{pair.main.url}/v1/responses/{rid}").json()
            seen.append((r["status"], sum(len(c["text"]) for o in r["output"] for c in o["content"])))
            time.sleep(0.2)
        progress = [n for status, n in seen if status == "in_progress"]
        assert any(progress) and progress == sorted(progress), seen  # it grew, unattended
        assert seen[-1][0] == "completed"
        assert metric(pair.main.app.url, "gateway_responses_attached") == 0
        entries = [e for e in pair.main.app.journal() if e["topic"] == topic]
        assert [e["outcome"] for e in entries] == ["completed"] * 3, entries  # the outline, two sections
        final = check_events(attach(client, pair.main.url, rid))
        assert final["status"] == "completed"


# --- c, d: cancel and disconnect ------------------------------------------------------------------


def test_cancel_stops_a_background_response_and_its_upstream_call(pair):
    topic = "Cancelled in the background"
    base, app = pair.main.url, pair.main.app
    with httpx.Client(timeout=30) as client:
        rid = client.post(f"{base}/v1/responses", json=request(f"{topic} {SLOW}", background=True)).json()[
            "id"
        ]
        wait_running(app, topic)
        started = time.monotonic()
        r = client.post(f"{base}/v1/responses/{rid}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
        assert time.monotonic() - started < 3
        assert closed_early(app, topic) < 5
        stored = client.get(f"{base}/v1/responses/{rid}").json()
        assert stored["status"] == "cancelled" and stored["completed_at"] is None
        assert [o["status"] for o in stored["output"]] == ["incomplete"]
        # An attach now replays what there was and ends: nothing more will come.
        replayed = attach(client, pair.peer.app.url, rid)
        assert replayed and not any(e["type"] == "response.completed" for e in replayed)
        assert settle(app.url, "gateway_responses_background", 0) == 0
        # Cancelling again answers the cancelled response.
        assert client.post(f"{base}/v1/responses/{rid}/cancel").json()["status"] == "cancelled"

        done = client.post(f"{base}/v1/responses", json=request("Not in the background [[sections:1]]"))
        assert done.json()["status"] == "completed"
        error = error_of(client.post(f"{base}/v1/responses/{done.json()['id']}/cancel"), 400)
        assert error["param"] == "response_id"


def test_delete_stops_a_running_background_response(pair):
    topic = "Deleted while running"
    base, app = pair.main.url, pair.main.app
    with httpx.Client(timeout=30) as client:
        rid = client.post(f"{base}/v1/responses", json=request(f"{topic} {SLOW}", background=True)).json()[
            "id"
        ]
        wait_running(app, topic)
        r = client.delete(f"{base}/v1/responses/{rid}")
        assert r.json() == {"id": rid, "object": "response", "deleted": True}
        assert closed_early(app, topic) < 5
        error_of(client.get(f"{base}/v1/responses/{rid}"), 404)
        assert settle(app.url, "gateway_responses_background", 0) == 0


def leave_stream(client: httpx.Client, pair: Pair, topic: str) -> str:
    """A streamed response without background, left in its outline: its id, once its upstream call was
    seen closed within seconds."""
    body = request(f"{topic} {SLOW}", stream=True)
    events = read(client, "POST", f"{pair.main.url}/v1/responses", stop=8, json=body)
    assert events[0]["response"]["background"] is False
    assert events[-1]["type"] == "response.reasoning_text.delta"
    assert closed_early(pair.main.app, topic) < 5
    return str(events[0]["response"]["id"])


def test_a_stream_without_background_is_cancelled_when_its_client_leaves(pair):
    with httpx.Client() as client:
        leave_stream(client, pair, "Left without background")


def test_a_stream_left_by_its_client_is_not_stored_as_running(pair):
    with httpx.Client() as client:
        rid = leave_stream(client, pair, "Left and stored")
        assert client.get(f"{pair.main.url}/v1/responses/{rid}").json()["status"] != "in_progress"


# --- e: ids and parameters ------------------------------------------------------------------------


def test_delete_then_not_found_and_bad_ids_and_parameters(pair):
    base = pair.main.url
    with httpx.Client(timeout=30) as client:
        rid = client.post(f"{base}/v1/responses", json=request("Deleted at once [[sections:1]]")).json()["id"]
        assert client.get(f"{pair.peer.app.url}/v1/responses/{rid}").status_code == 200
        error_of(client.get(f"{base}/v1/responses/{rid}?stream=true&starting_after=x"), 400)
        for bad in ("1.5", "", "1e3", "0x10"):
            error = error_of(client.get(f"{base}/v1/responses/{rid}?stream=true&starting_after={bad}"), 400)
            assert error["param"] == "starting_after"
        r = client.delete(f"{base}/v1/responses/{rid}")
        assert r.status_code == 200 and r.json() == {"id": rid, "object": "response", "deleted": True}
        for other in (base, pair.peer.app.url):
            error_of(client.get(f"{other}/v1/responses/{rid}"), 404)
            error_of(client.get(f"{other}/v1/responses/{rid}?stream=true&starting_after=0"), 404)
        error_of(client.delete(f"{base}/v1/responses/{rid}"), 404)
        error_of(client.post(f"{base}/v1/responses/{rid}/cancel"), 404)
        for bad in (UNKNOWN, "resp_123", "RESP_" + "a" * 48, "..%2F..%2Fetc%2Fpasswd", "%2e%2e", "x" * 300):
            error_of(client.get(f"{base}/v1/responses/{bad}"), 404)
            error_of(client.delete(f"{base}/v1/responses/{bad}"), 404)
            error_of(client.post(f"{base}/v1/responses/{bad}/cancel"), 404)


@pytest.mark.parametrize("bad", ["--1", "%C2%B2"])
def test_starting_after_that_only_looks_like_a_number_is_a_400(pair, bad):
    with httpx.Client(timeout=30) as client:
        rid = client.post(
            f"{pair.main.url}/v1/responses", json=request("Oddly numbered [[sections:1]]")
        ).json()["id"]
        error_of(client.get(f"{pair.main.url}/v1/responses/{rid}?stream=true&starting_after={bad}"), 400)


# --- f: keys and expiry ---------------------------------------------------------------------------


def test_stored_responses_need_a_key_and_expire(keyed):
    base, auth = keyed.url, {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(timeout=30) as client:
        body = request("Keyed background [[sections:1]][[pace:0]]", background=True)
        assert client.post(f"{base}/v1/responses", json=body).status_code == 401
        rid = client.post(f"{base}/v1/responses", json=body, headers=auth).json()["id"]
        assert finished(client, base, rid, headers=auth)["status"] == "completed"
        calls = [
            ("GET", f"/v1/responses/{rid}"),
            ("GET", f"/v1/responses/{rid}?stream=true&starting_after=0"),
            ("POST", f"/v1/responses/{rid}/cancel"),
            ("DELETE", f"/v1/responses/{rid}"),
        ]
        for method, path in calls:
            for headers in ({}, {"Authorization": "Bearer wrong-key"}):
                error_of(client.request(method, f"{base}{path}", headers=headers), 401)
        for method, path in calls:
            r = client.request(method, f"{base}{path}", headers=auth)
            assert r.status_code == 200, (method, path, r.text)
        error_of(client.get(f"{base}/v1/responses/{rid}", headers=auth), 404)  # the DELETE above

        rid = client.post(
            f"{base}/v1/responses", json=request("Expiring [[sections:1]]"), headers=auth
        ).json()["id"]
        assert client.get(f"{base}/v1/responses/{rid}", headers=auth).json()["status"] == "completed"
        time.sleep(TTL_SECONDS + 0.5)
        error_of(client.get(f"{base}/v1/responses/{rid}", headers=auth), 404)
        error_of(client.get(f"{base}/v1/responses/{rid}?stream=true", headers=auth), 404)


# --- g: metrics -----------------------------------------------------------------------------------


def test_metrics_count_background_responses_attached_clients_and_resumes(pair):
    base, app = pair.main.url, pair.main.app.url
    with httpx.Client(timeout=30) as client:
        assert settle(app, "gateway_responses_background", 0) == 0
        assert settle(app, "gateway_responses_attached", 0) == 0
        resumed = metric(app, "gateway_responses_resumed_total")
        body = request("Counted [[sections:1]][[pace:60]]", background=True)
        rid = client.post(f"{base}/v1/responses", json=body).json()["id"]
        assert settle(app, "gateway_responses_background", 1) == 1
        with client.stream("GET", f"{base}/v1/responses/{rid}?stream=true") as r:
            events = sse(r.iter_raw())
            head = [next(events) for _ in range(3)]
            assert [e["sequence_number"] for e in head] == [0, 1, 2]
            assert settle(app, "gateway_responses_attached", 1) == 1
            assert metric(app, "gateway_responses_resumed_total") == resumed  # from the start: no resume
        assert settle(app, "gateway_responses_attached", 0) == 0
        rest = attach(client, pair.main.url, rid, after=2)
        assert metric(app, "gateway_responses_resumed_total") == resumed + 1
        check_events(head + rest)
        assert settle(app, "gateway_responses_background", 0) == 0
        assert settle(app, "gateway_responses_attached", 0) == 0
