"""The agent registry: model id -> agent. Adding a MetaGPT role is one module and one line here.

Imports metagpt: only import after `app.metagpt_env.prepare`.
"""

from app.agents.base import AgentSpec, Registry
from app.agents.tutorial import write_tutorial


def build_registry() -> Registry:
    registry = Registry()
    registry.add(
        AgentSpec(
            id="write_tutorial",
            description="MetaGPT TutorialAssistant: writes a Markdown tutorial about the topic you give.",
            run=write_tutorial,
        )
    )
    return registry
