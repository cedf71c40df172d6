// What each failure means for the person at the page, and what they can do about it.

const UPSTREAM =
  "The language model behind the gateway failed, so nothing was written. Order again; if it keeps " +
  "failing, the gateway's operator should check its LLM.";

/** {code, text} for a GatewayError (or any error): the code stays the gateway's, for tests and logs. */
export function explain(error) {
  const code = error.code || "unknown_error";
  const said = error.message ? ` (${error.message.replace(/\.$/, "")})` : "";
  let text;
  if (code === "rate_limit_exceeded") {
    const wait = error.retryAfter ?? 5;
    text = `The gateway is busy${said}. Try again in ${wait} s.`;
  } else if (code === "invalid_api_key") {
    text = "The API key was not accepted. Enter a valid key for this gateway and order again.";
  } else if (code.startsWith("upstream_") || code === "agent_error") {
    text = `${UPSTREAM}${said ? ` Details${said}.` : ""}`;
  } else if (code === "generation_timeout") {
    text =
      "The tutorial took longer than the gateway's time limit, so it was stopped and nothing was " +
      "written. Try a narrower topic, or ask the operator to raise the limit.";
  } else if (code === "connection_lost") {
    text =
      "The connection to the gateway was lost. The gateway cancels a generation when its client " +
      "goes away, so this tutorial was cancelled and no file was written: order it again.";
  } else if (code === "connection_failed") {
    text = "The gateway could not be reached. Check the connection and order again.";
  } else if (code === "server_shutting_down" || code === "service_unavailable") {
    text = "The gateway is restarting or unavailable. Order again in a few seconds.";
  } else if (code === "global_limit_unavailable") {
    text = "The gateway cannot check its capacity right now. Order again in a few seconds.";
  } else if (code === "storage_full" || code === "storage_error") {
    text = `The gateway could not save the file${said}. Try again later, or tell its operator.`;
  } else if (code === "model_not_found") {
    text = `That agent is not available${said}. Choose another one.`;
  } else if (code === "missing_topic") {
    text = error.message;
  } else {
    text = `The gateway refused the order${said}.`;
  }
  return { code, text };
}
