"""The LLM side of MetaGPT as the gateway runs it: configuration built once, one upstream client per
worker, and a provider whose calls are relayed by its own request's greenlet.

Imports metagpt: only import after `app.runtime.metagpt_env.prepare`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from typing import Any

from metagpt.config2 import Config
from metagpt.configs.llm_config import LLMConfig
from metagpt.const import USE_CONFIG_TIMEOUT
from metagpt.context import AttrDict, Context
from metagpt.provider.openai_api import OpenAILLM
from metagpt.utils.cost_manager import CostManager
from metagpt.utils.token_counter import TOKEN_COSTS

from app.agents.base import Agent, AgentResult, Artifact, Sink, WrittenFile
from app.errors import AgentError, APIError, StorageError, UpstreamError
from app.generation.call import Call
from app.metrics import Metrics
from app.runtime.bridge import off_loop
from app.settings import Settings
from app.storage import TutorialStore, new_name
from app.upstream.client import UpstreamClient

log = logging.getLogger(__name__)


class GatewayLLM(OpenAILLM):
    """MetaGPT's OpenAI provider, as a service needs it.

    - Its replies are streamed by the request's greenlet over the worker's keep-alive connections
      (`app.upstream`), instead of an SDK client built per request (a new TLS context each) and an SDK
      object per chunk, each an asyncio loop iteration away from the client.
    - Its calls go to this request's sink only (a `Call` on its queue): no process-global hook, so no
      cross-talk.
    - Retries happen only before the first byte of an answer (connection refused, 429, 5xx). MetaGPT's
      tenacity retry re-streams a reply the client has already seen (duplicated text) and waits minutes.
    Usage is what the upstream reports (`stream_options.include_usage`), else estimated from characters:
    MetaGPT's fallback counts with tiktoken, which downloads its tables at first use.
    Only text chat goes through it (`aask` and what calls it, `acompletion_text`); MetaGPT's other
    client paths (non-streamed `ChatCompletion` objects, function calling, moderation, speech, images)
    fail with an `AgentError` that says which one was asked for.
    """

    def __init__(self, config: LLMConfig, sink: Sink, metrics: Metrics) -> None:
        # NOTE: OpenAILLM.__init__ is skipped on purpose: it builds a new AsyncOpenAI client.
        self.config = config
        self.model = config.model
        self.pricing_plan = config.model
        self.auto_max_tokens = False
        self.cost_manager = None
        self.sink = sink
        self.metrics = metrics

    def _cons_kwargs(self, messages: list[dict], timeout: Any = USE_CONFIG_TIMEOUT, **extra: Any) -> dict:
        kwargs = super()._cons_kwargs(messages, timeout, **extra)
        kwargs.pop("timeout")  # the shared client carries separate connect and read timeouts
        return kwargs

    @property
    def aclient(self) -> Any:
        raise _unsupported("its OpenAI SDK client")

    async def acompletion(self, messages: list[dict], timeout: int = 0) -> Any:
        raise _unsupported("a ChatCompletion object (acompletion)")

    async def _achat_completion(self, messages: list[dict], timeout: int = 0) -> Any:
        raise _unsupported("a non-streamed ChatCompletion (_achat_completion)")

    async def aask_code(self, messages: Any, timeout: int = 0, **kwargs: Any) -> dict:
        raise _unsupported("function calling (aask_code)")

    async def _achat_completion_function(self, messages: list[dict], timeout: int = 0, **kwargs: Any) -> Any:
        raise _unsupported("function calling (_achat_completion_function)")

    async def amoderation(self, content: Any) -> Any:
        raise _unsupported("moderation")

    async def atext_to_speech(self, **kwargs: Any) -> Any:
        raise _unsupported("text to speech")

    async def aspeech_to_text(self, **kwargs: Any) -> Any:
        raise _unsupported("speech to text")

    async def gen_image(self, *args: Any, **kwargs: Any) -> Any:
        raise _unsupported("image generation")

    async def chat(self, messages: list[dict]) -> str:
        """One chat completion of `messages` as they are, relayed like every call."""
        return await self._achat_completion_stream(messages)

    async def acompletion_text(self, messages: list[dict], stream: bool = False, timeout: int = 0) -> str:
        # Every MetaGPT call goes through the stream: one code path for tokens, usage and metrics.
        return await self._achat_completion_stream(messages)

    async def _achat_completion_stream(self, messages: list[dict], timeout: int = 0) -> str:
        started = time.monotonic()
        outcome = "failed"
        try:
            reply = await self._stream(messages)
            outcome = "completed"
            return reply
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            self.metrics.llm_requests.labels(outcome).inc()
            self.metrics.llm_request_duration.observe(time.monotonic() - started)

    async def _stream(self, messages: list[dict]) -> str:
        # NOTE: the reply is not read here: the request's greenlet streams it from the socket to the
        # client (app.generation, app.upstream), with no asyncio iteration per token, and settles the
        # future when it is complete. Cancelling this coroutine cancels the call, which closes the
        # upstream response.
        loop = asyncio.get_running_loop()
        call = Call(self._cons_kwargs(messages), self.sink.kind, loop, loop.create_future())
        self.sink.call(call)
        try:
            reply, usage = await call.future
        finally:
            call.cancel()
        if usage is not None:
            self.sink.usage.add(
                int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
            )
        else:
            prompt_chars = sum(len(str(m.get("content", ""))) for m in messages)
            self.sink.usage.add(-(-prompt_chars // 4), -(-len(reply) // 4))
        return reply


def _unsupported(what: str) -> AgentError:
    return AgentError(
        f"The agent asked the LLM for {what}; the gateway relays text chat completions only (MetaGPT's aask)."
    )


class Runtime:
    """Per-worker MetaGPT runtime: what every agent run shares."""

    def __init__(self, settings: Settings, store: TutorialStore, metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.llm_config = LLMConfig(
            api_type="openai",
            base_url=settings.llm_base_url,
            api_key=settings.llm_api_key.get_secret_value(),
            model=settings.llm_model,
            max_token=settings.llm_max_tokens,
            calc_usage=False,
            stream=True,
        )
        self.config = Config(llm=self.llm_config)
        self.client = UpstreamClient(
            settings.llm_base_url,
            settings.llm_api_key.get_secret_value(),
            read_timeout=settings.llm_timeout_seconds,
            connect_timeout=settings.llm_connect_timeout_seconds,
            retries=settings.llm_max_retries,
            poll_interval=settings.relay_interval_ms / 1000,
            longest_poll_interval=settings.relay_max_interval_ms / 1000,
            max_call_seconds=settings.llm_max_call_seconds,
            max_reply_bytes=settings.llm_max_reply_bytes,
            max_line_bytes=settings.llm_max_line_bytes,
        )

    def context(self) -> Context:
        # NOTE: pydantic deep-copies a default for every instance, and Context's empty `kwargs` and
        # CostManager's price table are costly to copy; given here, nothing is copied.
        return Context(
            config=self.config, cost_manager=CostManager(token_costs=TOKEN_COSTS), kwargs=AttrDict()
        )

    def llm(self, sink: Sink, temperature: float | None, max_tokens: int | None = None) -> GatewayLLM:
        config = self.llm_config
        update: dict[str, Any] = {}
        if temperature is not None:
            update["temperature"] = temperature
        if max_tokens is not None:
            update["max_token"] = max_tokens
        if update:
            config = config.model_copy(update=update)
        return GatewayLLM(config, sink, self.metrics)

    async def publish(self, agent: Agent, artifact: Artifact, sink: Sink) -> AgentResult:
        """Store the agent's file under a fresh name; the result the client is told about."""
        if sink.content() != artifact.text:
            raise AgentError(f"The streamed {agent.artifact} differs from the agent's; it was not saved.")
        data = artifact.text.encode("utf-8")
        name = new_name(artifact.title, default=agent.default_title)
        try:
            # The folder's fsync, S3's PUT: either would stop every stream of the worker on its thread.
            await off_loop(self.store.write, name, data)
        except OSError as exc:
            log.error("could not save %s (%d bytes, %s): %s", name, len(data), self.store.backend, exc)
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            self.metrics.storage_failures.labels("full" if full else "error").inc()
            raise StorageError(
                f"The server could not save the {agent.artifact}: "
                + ("its disk is full." if full else "its storage failed."),
                code="storage_full" if full else "storage_error",
            ) from None
        self.metrics.tutorials_written.labels(agent.id).inc()
        self.metrics.tutorial_bytes.labels(agent.id).inc(len(data))
        written = WrittenFile(
            name=name,
            bytes=len(data),
            title=artifact.title,
            media_type=artifact.media_type,
            kind=agent.artifact,
        )
        return AgentResult(usage=sink.usage, file=written)


def upstream_failure(exc: BaseException) -> APIError | None:
    """The API error for a failure of the upstream LLM call (`app.upstream` raises only these), or None."""
    return exc if isinstance(exc, UpstreamError) else None
