"""The upstream LLM call, off the asyncio loop: the relay's fast path to the model.

- `reply`: the seam the relay depends on (`Read`, `ReplyStream`, `ReplyClient`);
- `client`: the worker's `UpstreamClient`, a pool of keep-alive connections;
- `stream`: one streamed reply (`UpstreamStream`): HTTP parsed by httptools, retries, draining;
- `decoder` and `chunk`: SSE framing and the chunk JSON, by hand;
- `poller`: `ReadinessPoller`, which wakes the readers of many sockets in batches.
"""

from app.upstream.chunk import parse_chunk
from app.upstream.client import UpstreamClient
from app.upstream.decoder import EventDecoder
from app.upstream.poller import ReadinessPoller
from app.upstream.reply import SILENT, Read, ReplyClient, ReplyStream
from app.upstream.stream import UpstreamStream

__all__ = [
    "SILENT",
    "EventDecoder",
    "Read",
    "ReadinessPoller",
    "ReplyClient",
    "ReplyStream",
    "UpstreamClient",
    "UpstreamStream",
    "parse_chunk",
]
