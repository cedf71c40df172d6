"""openai-python's Responses API client against the gateway, run by the tests with .venv-tools' python (the
gateway's locked openai 1.x has no `responses`). Prints one JSON object per line:
{"event": ...} for each stream event (a resumed stream's with "phase": "resumed"), {"response": ...,
"output_text": ...} for a whole response. Every event and response is validated against the SDK's own
types, strictly: an event whose type the SDK does not know, a missing field or a wrong type exits 2.

Modes: `stream` (create with stream=True), `create` (stream=False), `resume` (background + stream, hang up
after --drop-after's sequence number, then retrieve(stream=True, starting_after=N) and retrieve()),
`helper` (the SDK's `responses.stream()` helper, which rebuilds the response from the events), and
`validate` (no request: the events another client printed, one JSON object a line on stdin).
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
import warnings
from typing import Any

import openai
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter, ValidationError

# The SDK's event union, by its `type` literal: its discriminator is the SDK's own marker, which pydantic
# does not see, so an event is validated against the one class its type names (clear errors, and an
# unknown type is an error of its own).
EVENTS: dict[str, TypeAdapter[Any]] = {
    typing.get_args(cls.model_fields["type"].annotation)[0]: TypeAdapter(cls)
    for cls in typing.get_args(typing.get_args(ResponseStreamEvent)[0])
}
RESPONSE: TypeAdapter[Response] = TypeAdapter(Response)


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def checked(adapter: TypeAdapter[Any], raw: dict[str, Any]) -> Any:
    """`raw` parsed by `adapter` in strict mode (no coercion); exits 2 naming the failure."""
    try:
        return adapter.validate_json(json.dumps(raw), strict=True)
    except ValidationError as e:
        print(f"INVALID {raw.get('type', raw.get('object'))}: {e}\n{json.dumps(raw)[:1000]}", file=sys.stderr)
        sys.exit(2)


def event(ev: Any, phase: str) -> dict[str, Any]:
    # NOTE: the SDK builds stream events without validating them (construct); to_dict() gives back the
    # fields as received, which are then validated for real.
    raw = ev.to_dict(mode="json")
    emit(event=raw, phase=phase, cls=known(raw))
    return raw


def known(raw: dict[str, Any]) -> str:
    """The SDK class `raw` validates as; exits 2 if none."""
    if raw.get("type") not in EVENTS:
        print(f"UNKNOWN event type {raw.get('type')!r}: {json.dumps(raw)[:1000]}", file=sys.stderr)
        sys.exit(2)
    return type(checked(EVENTS[raw["type"]], raw)).__name__


def response(resp: Response) -> None:
    raw = resp.to_dict(mode="json")
    checked(RESPONSE, raw)
    emit(response=raw, output_text=resp.output_text)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["stream", "create", "resume", "helper", "validate"])
    p.add_argument("--base-url")
    p.add_argument("--api-key", default="unused")
    p.add_argument("--model", default="write_tutorial")
    p.add_argument("--input", default="")
    p.add_argument("--drop-after", type=int, default=5, help="resume: hang up after this sequence number")
    p.add_argument("--extra", default="{}", help="extra body fields, as JSON")
    a = p.parse_args()
    # The stream helper's ParsedResponse (texts with a `parsed` field) makes pydantic's serializer warn.
    warnings.filterwarnings("ignore", message="Pydantic serializer warnings")
    if a.mode == "validate":
        for line in sys.stdin:
            raw = json.loads(line)
            emit(event=raw, phase="stdin", cls=known(raw))
        return
    client = openai.OpenAI(base_url=a.base_url, api_key=a.api_key, max_retries=0, timeout=120)
    kw: dict[str, Any] = {"model": a.model, "input": a.input, "extra_body": json.loads(a.extra)}

    if a.mode == "stream":
        for ev in client.responses.create(stream=True, **kw):
            event(ev, "created")
    elif a.mode == "create":
        response(client.responses.create(**kw))
    elif a.mode == "helper":
        with client.responses.stream(**kw) as stream:
            for ev in stream:
                event(ev, "created")
            response(stream.get_final_response())
    else:
        rid = None
        stream = client.responses.create(stream=True, background=True, **kw)
        for ev in stream:
            raw = event(ev, "created")
            rid = rid or raw.get("response", {}).get("id")
            if raw["sequence_number"] >= a.drop_after:
                break
        stream.close()  # the hang-up: a background generation goes on without us
        assert rid is not None, "no response.created event before the hang-up"
        for ev in client.responses.retrieve(rid, stream=True, starting_after=a.drop_after):
            event(ev, "resumed")
        response(client.responses.retrieve(rid))


if __name__ == "__main__":
    main()
