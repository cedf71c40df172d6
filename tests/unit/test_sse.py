import pytest

from app import sse


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"a": 1}, b'data: {"a":1}\n\n'),
        ({"t": "line1\nline2"}, b'data: {"t":"line1\\nline2"}\n\n'),
        ({"t": "caf\u00e9 \u6f22"}, 'data: {"t":"caf\u00e9 \u6f22"}\n\n'.encode()),
        ({"error": {"message": "x", "code": None}}, b'data: {"error":{"message":"x","code":null}}\n\n'),
        ([], b"data: []\n\n"),
    ],
)
def test_data_event_is_one_line_of_compact_json(payload, expected):
    assert sse.data(payload) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("keep-alive", b": keep-alive\n\n"), ("", b": \n\n"), ("a\nb", b": a\n: b\n\n")],
)
def test_comment(text, expected):
    assert sse.comment(text) == expected


def test_done_and_headers():
    assert sse.DONE == b"data: [DONE]\n\n"
    assert sse.HEADERS["Content-Type"].startswith("text/event-stream")
    assert sse.HEADERS["Cache-Control"] == "no-cache"
    assert sse.HEADERS["X-Accel-Buffering"] == "no"
