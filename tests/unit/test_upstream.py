import pytest

from app.errors import UpstreamError
from app.upstream import EventDecoder, parse_chunk


@pytest.mark.parametrize(
    ("chunks", "events"),
    [
        ([b"data: a\n\n"], [b"a"]),
        ([b"data: a\n", b"\ndata: b\n\n"], [b"a", b"b"]),
        ([b"da", b'ta: {"x":1}\r\n\r\n'], [b'{"x":1}']),
        ([b": comment\n\nevent: message\ndata: one\ndata: two\nid: 3\n\n"], [b"one\ntwo"]),
        ([b"data:nospace\n\n", b"data: [DONE]\n\n"], [b"nospace", b"[DONE]"]),
        ([b"data: partial"], []),
        ([b"\n\n\n"], []),
    ],
)
def test_event_decoder(chunks, events):
    decoder = EventDecoder()
    out = []
    for chunk in chunks:
        out += decoder.feed(chunk)
    assert out == events


def test_event_decoder_byte_by_byte():
    stream = b'data: {"choices":[{"delta":{"content":"caf\xc3\xa9"}}]}\n\ndata: [DONE]\n\n'
    decoder = EventDecoder()
    out = [e for i in range(len(stream)) for e in decoder.feed(stream[i : i + 1])]
    assert out == [b'{"choices":[{"delta":{"content":"caf\xc3\xa9"}}]}', b"[DONE]"]


@pytest.mark.parametrize(
    ("payload", "content", "usage"),
    [
        (b'{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}', "Hi", None),
        (b'{"choices":[{"index":0,"delta":{"role":"assistant"}}]}', "", None),
        (b'{"choices":[{"index":0,"delta":{"content":null}}]}', "", None),
        (
            b'{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}',
            "",
            {"prompt_tokens": 3, "completion_tokens": 4},
        ),
        (b'{"choices":[{"delta":{}}],"usage":null}', "", None),
    ],
)
def test_parse_chunk(payload, content, usage):
    assert parse_chunk(payload) == (content, usage)


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"{not json", "upstream_bad_output"),
        (b"[1,2]", "upstream_bad_output"),
        (b'{"error":{"message":"overloaded"}}', "upstream_status"),
    ],
)
def test_parse_chunk_errors(payload, code):
    with pytest.raises(UpstreamError) as info:
        parse_chunk(payload)
    assert info.value.code == code
