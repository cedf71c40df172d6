import pytest

from app.agents.base import Agent, AgentRequest, Artifact, Registry, Sink


def _agent(agent_id: str, description: str) -> Agent:
    class Noop(Agent):
        id = agent_id
        name = agent_id.upper()
        artifact = "note"
        default_title = "note"

        async def run(self, request: AgentRequest, sink: Sink, runtime: object) -> Artifact:  # type: ignore[override]
            return Artifact(title="", text="")

    Noop.description = description
    return Noop()


def test_registry_lookup_and_order():
    registry = Registry()
    registry.add(_agent("b", "B"))
    registry.add(_agent("a", "A"))
    assert registry.get("a").description == "A"
    assert registry.get("c") is None
    assert [s.id for s in registry] == ["b", "a"]


def test_registry_refuses_duplicates():
    registry = Registry()
    registry.add(_agent("a", "A"))
    with pytest.raises(ValueError, match="twice"):
        registry.add(_agent("a", "again"))


def test_build_registry_lists_write_tutorial_first(settings):
    from app.agents.registry import build_registry

    assert next(spec.id for spec in build_registry()) == "write_tutorial"


def test_sink_sends_agent_text_and_keeps_all_content():
    events, calls = [], []
    sink = Sink(lambda kind, text: events.append((kind, text)), calls.append)
    sink.relayed("reasoning", "{")  # relayed text was sent already: recorded, not sent again
    sink.emit("content", "# T")
    sink.relayed("content", " body")
    assert events == [("content", "# T")]
    assert sink.content() == "# T body"
    assert calls == []
