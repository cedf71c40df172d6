// Markdown that streams in, rendered as it comes and sanitized: the LLM's text is untrusted.
//
// Rendering a 100 KB document from scratch on every token would make the page unusable, so the text
// is cut at headings outside code fences: everything before the last such heading is rendered once
// into a block of its own and never touched again; only the part after it (the section being
// written) is rendered again, at most every RENDER_INTERVAL_MS.

const RENDER_INTERVAL_MS = 100;

// Only what Markdown produces, nothing active: no script, style, form, frame, media or SVG/MathML
// element, no event handler or style attribute. DOMPurify also drops javascript: and other unsafe
// URLs. Remote images are turned into links below: the page's CSP would block them anyway, and a
// tutorial must not make the reader's browser call anyone.
const SANITIZE = {
  ALLOWED_TAGS: [
    "a", "abbr", "b", "blockquote", "br", "code", "del", "details", "div", "em", "h1", "h2", "h3", "h4",
    "h5", "h6", "hr", "i", "img", "input", "kbd", "li", "ol", "p", "pre", "s", "span", "strong", "sub",
    "summary", "sup", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "ul",
  ],
  ALLOWED_ATTR: ["href", "title", "alt", "src", "class", "align", "start", "type", "checked", "disabled",
    "colspan", "rowspan"],
  ALLOW_DATA_ATTR: false,
  ALLOW_ARIA_ATTR: false,
  RETURN_DOM_FRAGMENT: true,
};

let purifyReady = false;

function preparePurify() {
  if (purifyReady) return;
  // Task-list checkboxes are the only inputs kept, and they stay inert.
  window.DOMPurify.addHook("afterSanitizeAttributes", (node) => {
    if (node.tagName === "INPUT") {
      if (node.getAttribute("type") !== "checkbox") node.remove();
      else node.setAttribute("disabled", "");
    } else if (node.tagName === "A" && node.hasAttribute("href")) {
      node.setAttribute("rel", "noopener noreferrer nofollow");
    }
  });
  purifyReady = true;
}

// Raw HTML in the Markdown is shown as the text it is, never parsed as markup: a tutorial has no need
// of it, and handing `<img onerror>` or `<style>` to even an inert parser makes the browser report
// the page's CSP refusing it. What Markdown itself produces then goes through DOMPurify.
const escapeHtml = (text) =>
  text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

const markdown = () =>
  new window.marked.Marked({
    gfm: true,
    breaks: false,
    async: false,
    renderer: {
      html: ({ text, block }) =>
        block ? `<pre class="raw-html"><code>${escapeHtml(text)}</code></pre>` : escapeHtml(text),
    },
  });
let parser = null;

/** Markdown to a sanitized fragment: images become links, code blocks are highlighted. */
export function renderMarkdown(text) {
  preparePurify();
  parser ??= markdown();
  const fragment = window.DOMPurify.sanitize(parser.parse(text), SANITIZE);
  for (const img of fragment.querySelectorAll("img")) {
    const src = img.getAttribute("src") || "";
    if (/^data:image\/(png|gif|jpe?g|webp);/i.test(src)) continue;
    const link = document.createElement(src ? "a" : "span");
    if (src) {
      link.href = src;
      link.rel = "noopener noreferrer nofollow";
    }
    link.className = "image-link";
    link.textContent = `[image: ${img.getAttribute("alt") || src || "untitled"}]`;
    img.replaceWith(link);
  }
  for (const code of fragment.querySelectorAll("pre > code")) highlight(code);
  return fragment;
}

function highlight(code) {
  const hljs = window.hljs;
  const lang = [...code.classList].find((c) => c.startsWith("language-"))?.slice("language-".length);
  // Only languages highlight.js knows: guessing costs time on every re-render, and an unknown name
  // would make it warn in the console.
  if (!hljs || !lang || !hljs.getLanguage(lang)) return;
  // highlight.js escapes the text it is given, so its HTML holds nothing from the tutorial but text.
  code.innerHTML = hljs.highlight(code.textContent, { language: lang, ignoreIllegals: true }).value;
  code.classList.add("hljs");
}

/**
 * Scans Markdown line by line for headings outside code fences, incrementally: each character is
 * looked at once however often `scan` is called.
 */
export class HeadingScanner {
  constructor() {
    this.pos = 0; // start of the first line not yet scanned
    this.fence = null; // the open fence's marker ("```", "~~~~"), or null
    this.headings = []; // {offset, level, text}
  }

  /** Scans the complete lines of `text` past the last call; returns the headings found now. */
  scan(text) {
    const found = [];
    let end;
    while ((end = text.indexOf("\n", this.pos)) !== -1) {
      const line = text.slice(this.pos, end);
      const fence = /^ {0,3}(`{3,}|~{3,})/.exec(line);
      if (this.fence) {
        if (fence && fence[1][0] === this.fence[0] && fence[1].length >= this.fence.length &&
            line.trim() === fence[1]) this.fence = null;
      } else if (fence) {
        this.fence = fence[1];
      } else {
        // Unindented only: an indented heading may belong to a list item, which a cut would split.
        const heading = /^(#{1,6})[ \t]+(.*?)[ \t#]*$/.exec(line);
        if (heading) found.push({ offset: this.pos, level: heading[1].length, text: heading[2] });
      }
      this.pos = end + 1;
    }
    this.headings.push(...found);
    return found;
  }
}

/** A document that grows by `append` and renders itself, in blocks, at most every 100 ms. */
export class LiveDocument {
  constructor(container) {
    this.container = container;
    this.text = "";
    this.committed = 0; // text[0:committed] is rendered into finished blocks
    this.scanner = new HeadingScanner();
    this.tail = null;
    this.timer = null;
    this.lastRender = 0;
    this.onHeading = null; // called with each heading as it is complete
    this.container.replaceChildren();
  }

  append(delta) {
    this.text += delta;
    for (const heading of this.scanner.scan(this.text)) this.onHeading?.(heading);
    this.schedule();
  }

  schedule() {
    if (this.timer !== null) return;
    const wait = Math.max(0, RENDER_INTERVAL_MS - (performance.now() - this.lastRender));
    this.timer = setTimeout(() => {
      this.timer = null;
      this.render();
    }, wait);
  }

  /** Replaces the whole text (the final file) and renders it at once. */
  finish(text) {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    if (text !== undefined && text !== this.text) {
      if (!text.startsWith(this.text.slice(0, this.committed))) {
        this.container.replaceChildren();
        this.committed = 0;
        this.tail = null;
      }
      this.text = text;
    }
    this.render(true);
  }

  render(final = false) {
    this.lastRender = performance.now();
    const follow = nearBottom();
    // Cut at the last heading found: the blocks before it are complete.
    const headings = this.scanner.headings;
    const cut = headings.length ? headings[headings.length - 1].offset : 0;
    if (cut > this.committed) {
      const block = document.createElement("div");
      block.className = "block";
      block.append(renderMarkdown(this.text.slice(this.committed, cut)));
      if (this.tail) this.tail.before(block);
      else this.container.append(block);
      this.committed = cut;
    }
    if (!this.tail) {
      this.tail = document.createElement("div");
      this.tail.className = "block";
      this.container.append(this.tail);
    }
    this.tail.replaceChildren(renderMarkdown(this.text.slice(this.committed)));
    if (final) this.tail.classList.add("final");
    if (follow) window.scrollTo({ top: document.documentElement.scrollHeight });
  }
}

// Follow the text as it grows only while the reader is at the end of the page: never pull them back
// down while they read something above.
function nearBottom() {
  const root = document.documentElement;
  return window.innerHeight + window.scrollY >= root.scrollHeight - 120;
}
