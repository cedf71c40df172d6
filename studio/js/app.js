// The studio: order a tutorial, watch it being planned and written, take the file away.
//
// One generation at a time, streamed from POST /v1/responses. The outline (the agent's plan) comes as
// reasoning text, the tutorial as output text; the page never sends the key anywhere but the gateway,
// and keeps it for the tab only (sessionStorage). Tutorials ordered here are listed from localStorage.

import { LiveDocument } from "./render.js";
import { GatewayError, fileText, listModels, streamResponse } from "./stream.js";
import { parseOutline } from "./outline.js";
import { explain } from "./messages.js";
import { History } from "./history.js";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "studio.apiKey";
const RUNNING = new Set(["submitting", "planning", "writing"]);

const ui = {
  studio: $("studio"),
  form: $("order-form"),
  topic: $("topic"),
  topicHint: $("topic-hint"),
  model: $("model"),
  language: $("language"),
  keyField: $("api-key-field"),
  key: $("api-key"),
  order: $("order"),
  stop: $("stop"),
  status: $("status"),
  error: $("error"),
  section: $("progress-section"),
  elapsed: $("elapsed"),
  tokens: $("tokens"),
  outline: $("outline"),
  thinking: $("thinking"),
  thinkingText: $("thinking-text"),
  tutorial: $("tutorial"),
  download: $("download"),
  copy: $("copy"),
  copyStatus: $("copy-status"),
};

const history = new History($("history"), $("history-empty"), $("history-clear"));
let run = null; // the generation on screen: see order()

// ------------------------------------------------------------------------------------------ setup

function apiKey() {
  return ui.key.value.trim() || null;
}

async function loadModels() {
  try {
    const models = await listModels(apiKey());
    const current = ui.model.value;
    ui.model.replaceChildren(
      ...models.map((m) => {
        const option = new Option(m.name && m.name !== m.id ? `${m.name} (${m.id})` : m.id, m.id);
        if (m.description) option.title = m.description;
        return option;
      }),
    );
    if (models.some((m) => m.id === current)) ui.model.value = current;
    ui.model.dataset.loaded = "true";
    describeModel();
  } catch (error) {
    if (error instanceof GatewayError && error.code === "invalid_api_key") {
      ui.keyField.hidden = false; // the gateway wants a key: ask for it
      if (apiKey()) showError(error);
    } else {
      showError(error);
    }
  }
}

// The hint under the topic is what the chosen agent does with it (a tutorial's topic, a lesson's text).
const TOPIC_HINT = ui.topicHint.textContent;
function describeModel() {
  ui.topicHint.textContent = ui.model.selectedOptions[0]?.title || TOPIC_HINT;
}
ui.model.addEventListener("change", describeModel);

ui.key.value = sessionStorage.getItem(KEY_STORAGE) ?? "";
ui.key.addEventListener("change", () => {
  if (apiKey()) sessionStorage.setItem(KEY_STORAGE, apiKey());
  else sessionStorage.removeItem(KEY_STORAGE);
  clearError();
  loadModels();
});

// ------------------------------------------------------------------------------------------ state

function setState(state) {
  ui.studio.dataset.state = state;
  const running = RUNNING.has(state);
  ui.order.disabled = running;
  ui.stop.disabled = !running;
  ui.tutorial.setAttribute("aria-busy", String(running));
}

function setStatus(text) {
  if (ui.status.textContent !== text) ui.status.textContent = text;
}

function showError(error) {
  const { code, text } = explain(error);
  ui.error.dataset.code = code;
  ui.error.textContent = text;
  ui.error.hidden = false;
}

function clearError() {
  ui.error.hidden = true;
  ui.error.textContent = "";
  delete ui.error.dataset.code;
}

function formatSeconds(ms) {
  const s = Math.floor(ms / 1000);
  return s < 60 ? `${s} s` : `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
}

const numbers = new Intl.NumberFormat("en");

// ------------------------------------------------------------------------------------------ outline

function showOutline(outline) {
  const list = document.createElement("ol");
  list.id = "outline-list";
  for (const section of outline.sections) {
    const item = document.createElement("li");
    item.dataset.state = "pending";
    const name = document.createElement("span");
    name.className = "section-name";
    name.textContent = section.name; // text, never HTML: it is the LLM's
    item.append(name);
    if (section.subs.length) {
      const subs = document.createElement("ul");
      for (const sub of section.subs) {
        const li = document.createElement("li");
        li.textContent = sub;
        subs.append(li);
      }
      item.append(subs);
    }
    list.append(item);
  }
  if (outline.title) {
    const title = document.createElement("p");
    title.className = "outline-title";
    title.textContent = outline.title;
    ui.outline.replaceChildren(title, list);
  } else {
    ui.outline.replaceChildren(list);
  }
}

function markSections(current, done = false) {
  const items = document.querySelectorAll("#outline-list > li");
  items.forEach((item, n) => {
    const state = done || n < current - 1 ? "done" : n === current - 1 ? "active" : "pending";
    item.dataset.state = state;
    if (state === "active") item.setAttribute("aria-current", "step");
    else item.removeAttribute("aria-current");
  });
}

// ------------------------------------------------------------------------------------------ a run

function resetView() {
  clearError();
  ui.download.hidden = true;
  ui.download.removeAttribute("href");
  ui.copy.hidden = true;
  ui.copyStatus.textContent = "";
  ui.section.textContent = "";
  ui.tokens.textContent = "≈ 0";
  ui.elapsed.textContent = "0 s";
  const raw = document.createElement("pre");
  raw.id = "outline-raw";
  raw.append(document.createTextNode(""));
  ui.outline.replaceChildren(raw);
  ui.thinking.hidden = true;
  ui.thinking.open = false;
  ui.thinkingText.textContent = "";
}

async function order(event) {
  event.preventDefault();
  if (run || performance.now() < heldUntil) return; // Ctrl+Enter reaches here with Order disabled
  const topic = ui.topic.value.trim();
  if (!topic) {
    showError(new GatewayError("missing_topic", "Enter a topic for the tutorial."));
    ui.topic.focus();
    return;
  }
  resetView();
  const doc = new LiveDocument(ui.tutorial);
  const current = {
    controller: new AbortController(),
    started: performance.now(),
    chars: 0, // streamed so far; tokens are estimated from it until the usage comes
    outline: null,
    reasoning: ui.outline.querySelector("#outline-raw").firstChild, // where reasoning text goes
    sections: 0,
    headingText: "",
    terminal: null, // "completed" | "failed", from the stream
    error: null,
    response: null,
    doc,
  };
  run = current;
  const tick = () => {
    ui.elapsed.textContent = formatSeconds(performance.now() - current.started);
  };
  const timer = setInterval(tick, 1000);
  doc.onHeading = (heading) => onHeading(current, heading);
  setState("submitting");
  setStatus("Sending the order…");
  const counter = setInterval(() => showTokens(current), 250);

  try {
    await streamResponse({
      model: ui.model.value,
      input: topic,
      language: ui.language.value.trim() || "English",
      apiKey: apiKey(),
      signal: current.controller.signal,
      onEvent: (e) => onEvent(current, e),
    });
    if (current.terminal === "completed") completed(current);
    else if (current.terminal === "failed") failed(current, current.error);
    else lost(current); // the stream ended without its last event: the gateway or a proxy went away
  } catch (error) {
    if (current.controller.signal.aborted) stopped(current);
    else if (error instanceof GatewayError) failed(current, (current.error = error));
    else lost(current);
  } finally {
    clearInterval(timer);
    clearInterval(counter);
    tick();
    showTokens(current);
    run = null;
    if (current.error?.code === "rate_limit_exceeded" && current.error.retryAfter) {
      holdOrder(current.error.retryAfter);
    }
  }
}

function onEvent(current, e) {
  switch (e.type) {
    case "response.created":
      current.response = e.response;
      setState("planning");
      setStatus("Planning the outline…");
      break;
    case "response.output_item.added":
      if (e.item.type === "message" && ui.studio.dataset.state !== "writing") {
        setState("writing");
        setStatus("Writing…");
        if (current.outline) ui.section.textContent = `0 / ${current.outline.sections.length}`;
      } else if (e.item.type === "reasoning" && current.outline) {
        // More reasoning after the plan: a reasoning model thinking before a section.
        ui.thinking.hidden = false;
        current.reasoning = ui.thinkingText.appendChild(document.createTextNode(""));
      }
      break;
    case "response.reasoning_text.delta":
      current.chars += e.delta.length;
      current.reasoning.appendData(e.delta);
      break;
    case "response.reasoning_text.done":
      if (!current.outline) {
        current.outline = parseOutline(e.text);
        if (current.outline) {
          showOutline(current.outline);
          setStatus(`Outline ready: ${current.outline.sections.length} sections.`);
        }
      }
      break;
    case "response.output_text.delta":
      current.chars += e.delta.length;
      current.doc.append(e.delta);
      break;
    case "response.completed":
      current.terminal = "completed";
      current.response = e.response;
      break;
    case "error":
      current.error = new GatewayError(e.code || "server_error", e.message || "The generation failed.");
      break;
    case "response.failed":
      current.terminal = "failed";
      current.error ??= new GatewayError(
        e.response?.error?.code || "server_error",
        e.response?.error?.message || "The generation failed.",
      );
      break;
    default:
      break;
  }
}

// The gateway's usage once the response is complete (the LLM's own count); until then an estimate
// (4 characters a token, as the gateway estimates for an upstream that reports none).
function showTokens(current) {
  const counted = current.response?.usage?.output_tokens;
  const text = counted != null ? numbers.format(counted) : `≈ ${numbers.format(Math.round(current.chars / 4))}`;
  if (ui.tokens.textContent !== text) ui.tokens.textContent = text;
}

function onHeading(current, heading) {
  if (heading.level !== 2) return;
  current.sections += 1;
  const total = current.outline?.sections.length;
  const n = current.sections;
  const name = current.outline?.sections[n - 1]?.name ?? heading.text;
  ui.section.textContent = total ? `${n} / ${total}` : String(n);
  setStatus(total ? `Writing section ${n} of ${total}: ${name}` : `Writing part ${n}: ${name}`);
  if (total) markSections(n);
}

function completed(current) {
  const response = current.response ?? {};
  const file = response.file ?? null;
  const markdown = fileText(current.doc.text, file);
  current.doc.finish(markdown);
  current.markdown = markdown;
  setState("completed");
  if (current.outline) markSections(current.outline.sections.length, true);
  if (file) {
    ui.download.href = file.url;
    ui.download.download = file.name;
    ui.download.textContent = `Download ${file.name}`;
    ui.download.hidden = false;
    history.add({
      title: file.title || current.outline?.title || file.name,
      name: file.name,
      url: file.url,
      bytes: file.bytes,
      model: response.model,
      at: Date.now(),
    });
  }
  lastMarkdown = markdown;
  ui.copy.hidden = false;
  const bytes = file?.bytes ?? new TextEncoder().encode(markdown).length;
  setStatus(`Done: ${file?.title ?? "the tutorial"}, ${numbers.format(bytes)} bytes.`);
}

function failed(current, error) {
  current.doc.finish();
  setState("failed");
  showError(error);
  setStatus("Failed: nothing was written.");
  if (error.code === "invalid_api_key") {
    ui.keyField.hidden = false;
    ui.key.focus();
  }
}

function stopped(current) {
  current.doc.finish();
  setState("stopped");
  setStatus("Stopped: the gateway cancelled the generation, and no file was written.");
}

function lost(current) {
  current.doc.finish();
  setState("lost");
  showError(new GatewayError("connection_lost", "The connection to the gateway was lost."));
  setStatus("Cancelled: the connection was lost.");
}

let heldUntil = 0;
const ORDER_LABEL = ui.order.textContent;

// After a 429 the Order button waits out Retry-After (the gateway would refuse sooner anyway).
function holdOrder(seconds) {
  heldUntil = performance.now() + Math.min(seconds, 120) * 1000;
  ui.order.disabled = true;
  const step = () => {
    const left = Math.ceil((heldUntil - performance.now()) / 1000);
    if (left <= 0) {
      ui.order.textContent = ORDER_LABEL;
      ui.order.disabled = false;
      return;
    }
    ui.order.textContent = `${ORDER_LABEL} (${left} s)`;
    setTimeout(step, 250);
  };
  step();
}

// ------------------------------------------------------------------------------------------ take away

let lastMarkdown = "";

async function copyMarkdown() {
  try {
    await navigator.clipboard.writeText(lastMarkdown);
  } catch {
    // No clipboard API (a page served over plain http to another host is not a secure context).
    const area = document.createElement("textarea");
    area.value = lastMarkdown;
    area.setAttribute("readonly", "");
    area.className = "offscreen";
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  ui.copyStatus.textContent = "Copied.";
  setTimeout(() => (ui.copyStatus.textContent = ""), 4000);
}

// ------------------------------------------------------------------------------------------ wiring

ui.form.addEventListener("submit", order);
ui.topic.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) ui.form.requestSubmit();
});
ui.stop.addEventListener("click", () => run?.controller.abort());
ui.copy.addEventListener("click", copyMarkdown);
history.render();
setState("idle");
loadModels();
