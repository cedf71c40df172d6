// The gateway's API, as the studio uses it: the agents, and one streamed Responses API call.

/** An error the page can explain: `code` is the gateway's (or the page's own, e.g. connection_lost). */
export class GatewayError extends Error {
  constructor(code, message, { status = 0, retryAfter = null, param = null } = {}) {
    super(message);
    this.code = code;
    this.status = status;
    this.retryAfter = retryAfter;
    this.param = param;
  }
}

function headers(apiKey, extra = {}) {
  return apiKey ? { ...extra, Authorization: `Bearer ${apiKey}` } : extra;
}

/** The OpenAI error object of a failed answer, as a GatewayError (whatever the body turns out to be). */
async function failure(response) {
  let error = {};
  try {
    error = (await response.json()).error ?? {};
  } catch {
    // not JSON: a proxy's page; the status says enough
  }
  const seconds = Number.parseInt(response.headers.get("Retry-After") ?? "", 10);
  return new GatewayError(
    error.code || `http_${response.status}`,
    error.message || `The gateway answered ${response.status} ${response.statusText}.`,
    { status: response.status, retryAfter: Number.isFinite(seconds) ? seconds : null, param: error.param },
  );
}

/** GET /v1/models: [{id, name, description}]. */
export async function listModels(apiKey) {
  const response = await fetch("/v1/models", { headers: headers(apiKey), cache: "no-store" });
  if (!response.ok) throw await failure(response);
  return (await response.json()).data;
}

/**
 * POST /v1/responses with stream: true, calling `onEvent(event)` for each event in order. Resolves
 * when the stream ends; rejects with a GatewayError before the stream (the HTTP error), or with
 * the fetch's own error when the connection breaks (an AbortError when `signal` aborted it).
 */
export async function streamResponse({ model, input, language, apiKey, signal, onEvent }) {
  let response;
  try {
    response = await fetch("/v1/responses", {
      method: "POST",
      headers: headers(apiKey, { "Content-Type": "application/json", Accept: "text/event-stream" }),
      // Not background: the gateway cancels the generation when this connection goes away (Stop).
      // Not stored: nothing reads it back.
      body: JSON.stringify({ model, input, language, stream: true, store: false }),
      signal,
      cache: "no-store",
    });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new GatewayError("connection_failed", "The gateway could not be reached.");
  }
  if (!response.ok) throw await failure(response);
  await readEvents(response.body, onEvent);
}

// The answer's text ends with the download link ("\n\n---\n\n[Download name](url)\n"); the file is
// everything before it.
export function fileText(text, file) {
  const link = text.lastIndexOf("\n\n---\n\n[Download ");
  return file && link >= 0 ? text.slice(0, link) : text;
}

/** Server-sent events: each event's JSON data, in order; comments (keep-alives) are skipped. */
async function readEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) !== -1) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("data:")) data.push(line.slice(line[5] === " " ? 6 : 5));
      }
      if (data.length) onEvent(JSON.parse(data.join("\n")));
    }
  }
}
