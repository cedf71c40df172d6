"""Agents: `base` (the contract, importable anywhere), `registry`, and one module per MetaGPT role.

`registry` and the role modules import metagpt: import them only after `app.runtime.metagpt_env.prepare`.
"""
