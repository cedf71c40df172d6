"""The HTTP API: one blueprint per endpoint group (`completions`, `models`, `files`, `health`), the
OpenAI wire format (`protocol`, `sse`), API keys (`auth`) and the OpenAPI document."""
