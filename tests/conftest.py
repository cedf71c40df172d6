"""Shared fixtures. MetaGPT is configured once per test process, in a temporary root."""

from __future__ import annotations

import pytest

from app.settings import Settings


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings for in-process tests (the Flask test client); MetaGPT's root is prepared once here."""
    from app.runtime import metagpt_env

    data_dir = tmp_path_factory.mktemp("data")
    result = Settings(data_dir=data_dir, llm_base_url="http://127.0.0.1:9/v1")
    metagpt_env.prepare(result)
    return result
