"""The agent registry: model id -> agent. Adding a MetaGPT role is one module and one line here.

Imports metagpt: only import after `app.runtime.metagpt_env.prepare`.
"""

from app.agents.base import Registry
from app.agents.teaching_plan import WriteTeachingPlan
from app.agents.tutorial import WriteTutorial


def build_registry() -> Registry:
    registry = Registry()
    registry.add(WriteTutorial())
    registry.add(WriteTeachingPlan())
    return registry
