import pytest

from app.api.protocol import Completion, FileLink, Usage, parse_request
from app.errors import InvalidRequest


def req(**overrides):
    body = {"model": "write_tutorial", "messages": [{"role": "user", "content": "MySQL"}]}
    body.update(overrides)
    return body


def test_minimal_request_defaults():
    r = parse_request(req())
    assert (r.model, r.stream, r.temperature, r.language) == ("write_tutorial", False, None, None)
    assert r.topic() == "MySQL"


def test_unknown_openai_fields_are_ignored():
    r = parse_request(req(top_p=0.5, user="u1", n=1, seed=3, metadata={"k": "v"}))
    assert r.topic() == "MySQL"


@pytest.mark.parametrize(
    ("messages", "topic"),
    [
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Postgres "}, {"type": "text", "text": "basics"}],
                }
            ],
            "Postgres basics",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "x"}},
                        {"type": "text", "text": "Redis"},
                    ],
                }
            ],
            "Redis",
        ),
        ([{"role": "system", "content": "be brief"}, {"role": "user", "content": "  Go  "}], "Go"),
        (
            [
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": "second"},
            ],
            "second",
        ),
    ],
)
def test_topic_is_last_user_text(messages, topic):
    assert parse_request(req(messages=messages)).topic() == topic


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        (req(model=3), "model"),
        (req(messages=[]), "messages"),
        (req(messages="hi"), "messages"),
        (req(messages=[{"role": "wizard", "content": "x"}]), "messages.0.role"),
        (req(messages=[{"role": "user", "content": [{"type": "hologram"}]}]), "messages.0.content.0.type"),
        (req(stream="yes"), "stream"),
        (req(temperature=3), "temperature"),
        (req(language=""), "language"),
        (req(stream_options={"include_usage": "no"}), "stream_options.include_usage"),
    ],
)
def test_invalid_requests_name_the_param(body, param):
    with pytest.raises(InvalidRequest) as info:
        parse_request(body)
    assert info.value.status == 400
    assert info.value.param == param


@pytest.mark.parametrize("payload", [[], "x", None, 3])
def test_non_object_body(payload):
    with pytest.raises(InvalidRequest):
        parse_request(payload)


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "assistant", "content": "only me"}],
        [{"role": "user", "content": "   "}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
        [{"role": "user", "content": "topic"}, {"role": "user", "content": None}],
    ],
)
def test_no_topic_is_invalid(messages):
    with pytest.raises(InvalidRequest) as info:
        parse_request(req(messages=messages)).topic()
    assert info.value.param == "messages"


def test_chunks_share_identity_and_usage_is_null_until_the_usage_chunk():
    c = Completion(model="write_tutorial", include_usage=True)
    first, last = c.chunk({"role": "assistant"}), c.chunk({}, finish_reason="stop", tutorial={"name": "n"})
    assert first["id"] == last["id"] and first["id"].startswith("chatcmpl-")
    assert first["created"] == last["created"]
    assert first["usage"] is None and last["tutorial"] == {"name": "n"}
    assert last["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]
    u = c.usage_chunk(Usage(3, 4))
    assert u["choices"] == [] and u["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 4,
        "total_tokens": 7,
    }


def test_no_usage_field_without_include_usage():
    assert "usage" not in Completion(model="m").chunk({})


def test_whole_completion():
    f = FileLink(name="a-0.md", url="http://h/download/a-0.md", bytes=5, title="A", kind="tutorial")
    body = Completion(model="m").whole("text", "plan", Usage(1, 2), f)
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "text",
        "refusal": None,
        "reasoning_content": "plan",
    }
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["tutorial"]["url"] == "http://h/download/a-0.md"
    assert body["usage"]["total_tokens"] == 3


def test_link_markdown_ends_with_the_link():
    f = FileLink(name="a-0.md", url="http://h/download/a-0.md", bytes=5, title="A", kind="tutorial")
    assert f.link_markdown() == "\n\n---\n\n[Download a-0.md](http://h/download/a-0.md)\n"
