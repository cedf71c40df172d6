"""MetaGPT 0.8.2's TutorialAssistant prompt templates, copied so tests can build its prompts without
importing metagpt (tests/unit/test_scripted_llm_script.py checks the copy against the installed one)."""

from __future__ import annotations

COMMON_PROMPT = """
You are now a seasoned technical professional in the field of the internet. 
We need you to write a technical tutorial with the topic "{topic}".
"""  # noqa: W291 - the trailing space is part of MetaGPT's template

DIRECTORY_PROMPT = (
    COMMON_PROMPT
    + """
Please provide the specific table of contents for this tutorial, strictly following the following requirements:
1. The output must be strictly in the specified language, {language}.
2. Answer strictly in the dictionary format like {{"title": "xxx", "directory": [{{"dir 1": ["sub dir 1", "sub dir 2"]}}, {{"dir 2": ["sub dir 3", "sub dir 4"]}}]}}.
3. The directory should be as specific and sufficient as possible, with a primary and secondary directory.The secondary directory is in the array.
4. Do not have extra spaces or line breaks.
5. Each directory title has practical significance.
"""  # noqa: E501
)

CONTENT_PROMPT = (
    COMMON_PROMPT
    + """
Now I will give you the module directory titles for the topic. 
Please output the detailed principle content of this title in detail. 
If there are code examples, please provide them according to standard code specifications. 
Without a code example, it is not necessary.

The module directory titles for the topic is as follows:
{directory}

Strictly limit output according to the following requirements:
1. Follow the Markdown syntax format for layout.
2. If there are code examples, they must follow standard syntax specifications, have document annotations, and be displayed in code blocks.
3. The output must be strictly in the specified language, {language}.
4. Do not have redundant output, including concluding remarks.
5. Strict requirement not to output the topic "{topic}".
"""  # noqa: W291, E501
)


def outline_prompt(topic: str) -> str:
    return DIRECTORY_PROMPT.format(topic=topic, language="English")


def section_prompt(topic: str, directory: dict[str, list[str]]) -> str:
    return CONTENT_PROMPT.format(topic=topic, language="English", directory=directory)
