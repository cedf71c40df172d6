"""MetaGPT inside a gevent worker: its environment (`metagpt_env`, `lazy_packages`), the asyncio loop it
runs on (`bridge`), and its LLM as the gateway serves it (`llm`: `GatewayLLM`, `Runtime`).

Nothing here may import metagpt at package import: `metagpt_env.prepare` must run first.
"""
