"""Every error case over real HTTP: the right status and an OpenAI error object, never a 200."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.helpers import body, stream_raw

pytestmark = pytest.mark.integration


def assert_error(
    r: httpx.Response, status: int, type_: str, code: str | None = None, param: str | None = None
):
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == type_
    if code is not None:
        assert error["code"] == code
    assert error["param"] == param


URL = "/v1/chat/completions"


@pytest.mark.parametrize(
    ("kwargs", "status", "type_", "code", "param"),
    [
        (
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            400,
            "invalid_request_error",
            None,
            None,
        ),
        (
            {"content": b"\xff\xfe", "headers": {"content-type": "application/json"}},
            400,
            "invalid_request_error",
            None,
            None,
        ),
        (
            {"content": b'{"model":"write_tutorial"}', "headers": {"content-type": "text/plain"}},
            415,
            "invalid_request_error",
            "unsupported_media_type",
            None,
        ),
        ({"json": [1, 2]}, 400, "invalid_request_error", None, None),
        ({"json": {"model": "write_tutorial"}}, 400, "invalid_request_error", None, "messages"),
        ({"json": body("x", stream="yes")}, 400, "invalid_request_error", None, "stream"),
        ({"json": body("x", temperature=9)}, 400, "invalid_request_error", None, "temperature"),
        (
            {
                "json": {
                    "model": "write_tutorial",
                    "stream": True,
                    "messages": [{"role": "user", "content": ""}],
                }
            },
            400,
            "invalid_request_error",
            None,
            "messages",
        ),
        (
            {"json": body("x", model="nope", stream=True)},
            404,
            "invalid_request_error",
            "model_not_found",
            "model",
        ),
        (
            {
                "content": b'{"model":"write_tutorial","pad":"' + b"x" * (2 << 20) + b'"}',
                "headers": {"content-type": "application/json"},
            },
            413,
            "invalid_request_error",
            "request_too_large",
            None,
        ),
    ],
)
def test_bad_requests(stack, kwargs, status, type_, code, param):
    assert_error(httpx.post(stack.url + URL, timeout=30, **kwargs), status, type_, code, param)


def test_method_and_route_errors(stack):
    r = httpx.get(stack.url + URL, timeout=10)
    assert_error(r, 405, "invalid_request_error", "method_not_allowed")
    assert "POST" in r.headers["allow"]
    assert_error(httpx.get(stack.url + "/v1/nothing", timeout=10), 404, "invalid_request_error", "not_found")
    assert_error(
        httpx.get(stack.url + "/download/none-" + "0" * 32 + ".md", timeout=10),
        404,
        "invalid_request_error",
        "not_found",
    )
    assert_error(
        httpx.get(stack.url + "/download/..%2F..%2Fetc%2Fpasswd", timeout=10),
        404,
        "invalid_request_error",
        "not_found",
    )


@pytest.mark.parametrize(
    ("directive", "code"),
    [("[[fault:http500]]", "upstream_status"), ("[[fault:close]]", "upstream_unavailable")],
)
def test_upstream_failure_before_streaming_gets_a_status(stack, directive, code):
    r = httpx.post(stack.url + URL, json=body(f"Failing early {directive}", stream=True), timeout=60)
    assert_error(r, 502, "upstream_error", code)
    assert r.headers.get("content-type") != "text/event-stream"
    # The operator's side: the worker's log says which agent failed and why.
    message = r.json()["error"]["message"]
    assert f"agent write_tutorial failed: {message} ({code}, HTTP 502)" in stack.log.read_text()


def test_upstream_failure_non_streaming(stack):
    r = httpx.post(stack.url + URL, json=body("Failing non-stream [[fault:http500]]"), timeout=60)
    assert_error(r, 502, "upstream_error", "upstream_status")


@pytest.mark.parametrize(
    ("directive", "code"),
    [
        ("[[fault:cut]][[fault_at:section]][[after:3]]", "upstream_unavailable"),
        ("[[fault:bad_outline]]", "upstream_bad_output"),
        ("[[fault:empty_outline]]", "upstream_bad_output"),
    ],
)
def test_error_after_streaming_began_is_an_event_then_done(stack, directive, code):
    before = set(stack.tutorials.iterdir())
    s = stream_raw(stack.url, body(f"Failing late {directive}", stream=True))
    assert s.status == 200
    assert s.events[-1] == b"data: [DONE]\n\n"
    error = s.data()[-2]["error"]
    assert error["type"] == "upstream_error" and error["code"] == code and error["message"]
    assert not any(c["choices"] and c["choices"][0]["finish_reason"] for c in s.chunks())
    assert set(stack.tutorials.iterdir()) == before  # no half tutorial was published
