import pytest

from app.api import sse
from app.api.protocol import Completion


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


@pytest.mark.parametrize(
    "text", ["", " hello", 'quote " and \\ backslash', "line\nbreak", "café 🚀", "\x00\x1f"]
)
@pytest.mark.parametrize("include_usage", [False, True])
def test_template_is_byte_identical_to_a_full_dump(text, include_usage):
    completion = Completion(model="write_tutorial", include_usage=include_usage)
    template = sse.Template(lambda t: completion.chunk({"reasoning_content": t}))
    assert template(text) == sse.data(completion.chunk({"reasoning_content": text}))


def test_template_needs_exactly_one_slot():
    with pytest.raises(ValueError):
        sse.Template(lambda t: {"a": t, "b": t})
    with pytest.raises(ValueError):
        sse.Template(lambda t: {"a": "fixed"})
