"""Agents: `base` (what every agent shares, importable anywhere) and one module per MetaGPT role.

`registry` and the role modules import metagpt: import them only after `app.metagpt_env.prepare`.
"""
