// The tutorial's outline, from the agent's reasoning text.

/**
 * The plan MetaGPT's WriteDirectory asked for, {"title": ..., "directory": [{section: [subs]}]}, as
 * {title, sections: [{name, subs}]}; null when the text holds none. The JSON may follow a reasoning
 * model's thinking or sit in a code fence: it starts at the last `{"title"` (else the first brace).
 */
export function parseOutline(text) {
  const starts = [...text.matchAll(/\{\s*"title"/g)];
  const from = starts.length ? starts[starts.length - 1].index : text.indexOf("{");
  const to = text.lastIndexOf("}");
  if (from < 0 || to < from) return null;
  let value;
  try {
    value = JSON.parse(text.slice(from, to + 1));
  } catch {
    return null;
  }
  if (!value || !Array.isArray(value.directory)) return null;
  const sections = [];
  for (const entry of value.directory) {
    if (!entry || typeof entry !== "object") continue;
    for (const [name, subs] of Object.entries(entry)) {
      sections.push({ name: String(name), subs: Array.isArray(subs) ? subs.map(String) : [] });
    }
  }
  return sections.length ? { title: String(value.title ?? ""), sections } : null;
}
