"""Prepare the process for MetaGPT before anything imports it.

MetaGPT decides where it writes (logs, workspace, schemas) from METAGPT_PROJECT_ROOT at import time and
builds `Config.default()` at import, which needs an `llm:` section in a config2.yaml; it also imports
GitPython, which must be told that a host without git is fine. The real LLM settings are given per
agent (`app.runtime.llm`), so the file written here is a placeholder. MetaGPT's
packages that import all their siblings are imported lazily, and a few libraries its modules import
but the gateway never uses are loaded only if used (`app.runtime.lazy_packages`).
"""

from __future__ import annotations

import logging
import os
import platform
import sys

from app.runtime import lazy_packages
from app.settings import Settings

_PLACEHOLDER = (
    "# Written by the gateway: real LLM settings come from GATEWAY_LLM_*.\nllm:\n  api_key: unused\n"
)


def prepare(settings: Settings) -> None:
    root = settings.metagpt_root_path
    (root / "config").mkdir(parents=True, exist_ok=True)
    config = root / "config" / "config2.yaml"
    if not config.exists() or config.read_text() != _PLACEHOLDER:
        config.write_text(_PLACEHOLDER)
    if "metagpt" in sys.modules and os.environ.get("METAGPT_PROJECT_ROOT") != str(root):
        raise RuntimeError("metagpt was imported before its project root was set")
    os.environ["METAGPT_PROJECT_ROOT"] = str(root)
    # MetaGPT imports GitPython at import time (metagpt.context -> utils.git_repository), and GitPython
    # raises ImportError("Bad git executable") on a host without `git` (the image has none, issue 16).
    # The gateway never runs git; this is GitPython's own switch for importing without it.
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    # thousands of modules per worker that the gateway never uses (bench/PERFORMANCE.md)
    if late := lazy_packages.install() + lazy_packages.defer():
        logging.getLogger(__name__).warning("imported before the gateway could make them lazy: %s", late)
    # The openai SDK calls platform.platform() for every new client; under gevent, outside the main
    # greenlet, its first call forks `uname -p` and fails. Calling it once here caches the answer.
    platform.platform()


def cache_models_config() -> None:
    """Every MetaGPT Action re-reads and re-parses the config2.yaml files (`ModelsConfig.default()`)
    when it is built, several times per request; they are the gateway's placeholder and never change
    while it runs, so one parse serves the whole process."""
    from metagpt.configs.models_config import ModelsConfig

    models = ModelsConfig.default()
    ModelsConfig.default = classmethod(lambda cls: models)


def configure_logging(settings: Settings) -> None:
    """Route MetaGPT's loguru output: stderr at the configured level, and no prompt file unless asked."""
    # NOTE: importing metagpt.logs runs its define_log_level(), which adds the DEBUG prompt file sink;
    # it must have run before the sinks are replaced here, or it would add that sink back later.
    import metagpt.logs  # noqa: F401
    from loguru import logger
    from metagpt.const import METAGPT_ROOT

    logger.remove()
    logger.add(sys.stderr, level=settings.metagpt_log_level)
    if settings.metagpt_prompt_log:
        logger.add(METAGPT_ROOT / "logs" / "prompts.txt", level="DEBUG", rotation="50 MB", retention=5)
