import pytest

from app.agents.base import AgentRequest, AgentResult, AgentSpec, Registry, Sink
from app.protocol import Usage


async def _noop(request: AgentRequest, sink: Sink, runtime: object) -> AgentResult:
    return AgentResult(usage=Usage())


def test_registry_lookup_and_order():
    registry = Registry()
    registry.add(AgentSpec(id="b", description="B", run=_noop))
    registry.add(AgentSpec(id="a", description="A", run=_noop))
    assert registry.get("a").description == "A"
    assert registry.get("c") is None
    assert [s.id for s in registry] == ["b", "a"]


def test_registry_refuses_duplicates():
    registry = Registry()
    registry.add(AgentSpec(id="a", description="A", run=_noop))
    with pytest.raises(ValueError, match="twice"):
        registry.add(AgentSpec(id="a", description="again", run=_noop))


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
