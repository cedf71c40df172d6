"""``python -m scripted_llm``: run the scripted (fake) LLM server.

Meant for local runs and tests of the gateway without a real model.  ``--max-lifetime``
makes the process exit by itself so that a test that forgets to kill it cannot leave it
behind.  SIGTERM and SIGINT stop it cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Sequence

from aiohttp import web

from scripted_llm.server import create_app

log = logging.getLogger("scripted_llm")

# How long in-flight streams get to finish on shutdown before they are cancelled.
_SHUTDOWN_GRACE_SECONDS = 2.0


def _env_default(name: str, default: str) -> str:
    return os.environ.get(name) or default


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m scripted_llm",
        description="Scripted OpenAI-compatible LLM stand-in (no model, deterministic answers).",
    )
    parser.add_argument("--host", default=_env_default("SCRIPTED_LLM_HOST", "127.0.0.1"))
    parser.add_argument(
        "--port", default=_env_default("SCRIPTED_LLM_PORT", "8081"), help="0 picks a free port"
    )
    parser.add_argument(
        "--pace", default=_env_default("SCRIPTED_LLM_PACE", "20"), help="tokens per second, 0 = no delay"
    )
    parser.add_argument("--model", default="scripted", help="model id reported by /v1/models")
    parser.add_argument(
        "--max-lifetime", type=float, default=None, metavar="SECONDS", help="exit after this long"
    )
    args = parser.parse_args(argv)
    # Parsed here rather than with type= so that bad environment values are reported too.
    try:
        args.port = int(args.port)
        args.pace = float(args.pace)
    except ValueError as exc:
        parser.error(f"invalid --port/--pace (or SCRIPTED_LLM_PORT/SCRIPTED_LLM_PACE): {exc}")
    if not 0 <= args.port <= 65535:
        parser.error("--port must be between 0 and 65535")
    if not args.pace >= 0:
        parser.error("--pace must be >= 0")
    if args.max_lifetime is not None and not args.max_lifetime > 0:
        parser.error("--max-lifetime must be > 0")
    return args


async def _serve(args: argparse.Namespace) -> None:
    app = create_app(pace=args.pace, model=args.model)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    # Binding the socket ourselves makes the real port known when --port 0 asks for any free one.
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.create_server((args.host, args.port), family=family)
    port = sock.getsockname()[1]
    site = web.SockSite(runner, sock, shutdown_timeout=_SHUTDOWN_GRACE_SECONDS)
    await site.start()
    url_host = f"[{args.host}]" if family == socket.AF_INET6 else args.host
    log.info(
        "scripted LLM (a stand-in, NOT a real model) listening on http://%s:%d/v1 model=%s pace=%s tokens/s",
        url_host,
        port,
        args.model,
        args.pace,
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=args.max_lifetime)
        if stop.is_set():
            log.info("scripted LLM stopping on signal")
        else:
            log.info("scripted LLM stopping: --max-lifetime of %ss reached", args.max_lifetime)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
