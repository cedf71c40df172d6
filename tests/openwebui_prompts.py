"""Open WebUI's housekeeping prompts (chat title, follow-ups, tags), for tests of the scripted LLM and
the gateway.

The templates are copied verbatim from open-webui's ``backend/open_webui/config.py`` as released in the
0.6 series (commit 2586f1f39273cacddb86fb6d793141d663b79803); :data:`MAIN_TITLE_GENERATION_PROMPT_TEMPLATE`
is the newer title template of its main branch (2-4 words, no emojis).  :func:`render` fills the
``{{MESSAGES...}}`` variables the way ``replace_messages_variable`` / ``get_messages_content`` in
``open_webui/utils`` do: each message as ``ROLE: text`` (role upper-cased), joined by newlines.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

DEFAULT_TITLE_GENERATION_PROMPT_TEMPLATE = """### Task:
Generate a concise, 3-5 word title with an emoji summarizing the chat history.
### Guidelines:
- The title should clearly represent the main theme or subject of the conversation.
- Use emojis that enhance understanding of the topic, but avoid quotation marks or special formatting.
- Write the title in the chat's primary language; default to English if multilingual.
- Prioritize accuracy over excessive creativity; keep it clear and simple.
- Your entire response must consist solely of the JSON object, without any introductory or concluding text.
- The output must be a single, raw JSON object, without any markdown code fences or other encapsulating text.
- Ensure no conversational text, affirmations, or explanations precede or follow the raw JSON output, as this will cause direct parsing failure.
### Output:
JSON format: { "title": "your concise title here" }
### Examples:
- { "title": "📉 Stock Market Trends" },
- { "title": "🍪 Perfect Chocolate Chip Recipe" },
- { "title": "Evolution of Music Streaming" },
- { "title": "Remote Work Productivity Tips" },
- { "title": "Artificial Intelligence in Healthcare" },
- { "title": "🎮 Video Game Development Insights" }
### Chat History:
<chat_history>
{{MESSAGES:END:2}}
</chat_history>"""  # noqa: E501

MAIN_TITLE_GENERATION_PROMPT_TEMPLATE = """### Task:
Generate a concise title summarizing the chat history.
### Guidelines:
- The title should clearly represent the main theme or subject of the conversation.
- Keep it short: 2-4 words is best.
- Do not use emojis, quotation marks, or special formatting.
- Write the title in the chat's primary language; default to English if multilingual.
- Prioritize accuracy over creativity.
- Your entire response must consist solely of the JSON object, without any introductory or concluding text.
- The output must be a single, raw JSON object, without any markdown code fences or other encapsulating text.
- Ensure no conversational text, affirmations, or explanations precede or follow the raw JSON output, as this will cause direct parsing failure.
### Output:
JSON format: { "title": "your concise title here" }
### Examples:
- { "title": "Stock Trends" },
- { "title": "Chocolate Chip Cookies" },
- { "title": "Music Streaming" },
- { "title": "Remote Work" }
### Chat History:
<chat_history>
{{MESSAGES:END:2}}
</chat_history>"""  # noqa: E501

DEFAULT_TAGS_GENERATION_PROMPT_TEMPLATE = """### Task:
Generate 1-3 broad tags categorizing the main themes of the chat history, along with 1-3 more specific subtopic tags.

### Guidelines:
- Start with high-level domains (e.g. Science, Technology, Philosophy, Arts, Politics, Business, Health, Sports, Entertainment, Education)
- Consider including relevant subfields/subdomains if they are strongly represented throughout the conversation
- If content is too short (less than 3 messages) or too diverse, use only ["General"]
- Use the chat's primary language; default to English if multilingual
- Prioritize accuracy over specificity

### Output:
JSON format: { "tags": ["tag1", "tag2", "tag3"] }

### Chat History:
<chat_history>
{{MESSAGES:END:6}}
</chat_history>"""  # noqa: E501

DEFAULT_FOLLOW_UP_GENERATION_PROMPT_TEMPLATE = """### Task:
Suggest 3-5 relevant follow-up questions or prompts that the user might naturally ask next in this conversation as a **user**, based on the chat history, to help continue or deepen the discussion.
### Guidelines:
- Write all follow-up questions from the user’s point of view, directed to the assistant.
- Make questions concise, clear, and directly related to the discussed topic(s).
- Only suggest follow-ups that make sense given the chat content and do not repeat what was already covered.
- If the conversation is very short or not specific, suggest more general (but relevant) follow-ups the user might ask.
- Use the conversation's primary language; default to English if multilingual.
- Response must be a JSON array of strings, no extra text or formatting.
### Output:
JSON format: { "follow_ups": ["Question 1?", "Question 2?", "Question 3?"] }
### Chat History:
<chat_history>
{{MESSAGES:END:6}}
</chat_history>"""  # noqa: E501, RUF001 - the typographic apostrophe is Open WebUI's

# Open WebUI's title request caps the answer (``max_tokens`` for Ollama-style connections).
TITLE_MAX_TOKENS = 1000

_MESSAGES_RE = re.compile(
    r"{{MESSAGES}}|{{MESSAGES:START:(\d+)}}|{{MESSAGES:END:(\d+)}}|{{MESSAGES:MIDDLETRUNCATE:(\d+)}}"
)

Message = Mapping[str, Any]


def message_text(message: Message) -> str:
    """A message's text: a string content, or the first text part of a list content."""
    content = message.get("content")
    if isinstance(content, list):
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "text":
                return str(part.get("text", ""))
        return ""
    return "" if content is None else str(content)


def messages_content(messages: Sequence[Message]) -> str:
    """``ROLE: text`` lines, as Open WebUI's ``get_messages_content``."""
    return "\n".join(f"{str(m['role']).upper()}: {message_text(m)}" for m in messages)


def render(template: str, messages: Sequence[Message]) -> str:
    """``template`` with its ``{{MESSAGES}}``, ``{{MESSAGES:START:n}}``, ``{{MESSAGES:END:n}}`` and
    ``{{MESSAGES:MIDDLETRUNCATE:n}}`` variables replaced by the chat's messages."""

    def replace(found: re.Match[str]) -> str:
        start, end, middle = found.group(1), found.group(2), found.group(3)
        if start is not None:
            return messages_content(messages[: int(start)])
        if end is not None:
            return messages_content(messages[-int(end) :])
        if middle is not None:
            mid = int(middle)
            if len(messages) <= mid:
                return messages_content(messages)
            head = messages[: math.ceil(mid / 2)]
            tail = messages[-math.floor(mid / 2) :] if mid > 1 else []
            return messages_content(list(head) + list(tail))
        return messages_content(messages)

    return _MESSAGES_RE.sub(replace, template)


def title_prompt(
    messages: Sequence[Message], template: str = DEFAULT_TITLE_GENERATION_PROMPT_TEMPLATE
) -> str:
    return render(template, messages)


def follow_ups_prompt(messages: Sequence[Message]) -> str:
    return render(DEFAULT_FOLLOW_UP_GENERATION_PROMPT_TEMPLATE, messages)


def tags_prompt(messages: Sequence[Message]) -> str:
    return render(DEFAULT_TAGS_GENERATION_PROMPT_TEMPLATE, messages)


def task_body(prompt: str, model: str = "scripted", max_tokens: int | None = None) -> dict[str, Any]:
    """A chat completion body as Open WebUI sends a task: one user message, not streamed."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "stream": False,
    }
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


def title_body(messages: Sequence[Message], model: str = "scripted") -> dict[str, Any]:
    return task_body(title_prompt(messages), model, TITLE_MAX_TOKENS)


def follow_ups_body(messages: Sequence[Message], model: str = "scripted") -> dict[str, Any]:
    return task_body(follow_ups_prompt(messages), model)


def tags_body(messages: Sequence[Message], model: str = "scripted") -> dict[str, Any]:
    return task_body(tags_prompt(messages), model)
