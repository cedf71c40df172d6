"""One request's generation, from the agent's LLM calls to the client's socket.

- `job`: `Generation`, the agent run on the bridge and its events read by the request's greenlet;
  `collect` for non-streaming requests;
- `call`: `Call`, an LLM call MetaGPT awaits on the loop, relayed by that greenlet;
- `body`: the SSE event sequence and its writer.

Plain tokens skip most of this once a stream is under way: `app.upstream.poller` reads them in its
tick and `app.transport.direct` writes them to the client's socket.
"""
