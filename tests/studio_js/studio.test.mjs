// The studio's pure parts, run by node's test runner (tests/unit/test_studio_scripts.py): the heading
// scanner that decides where streamed Markdown is cut, the outline parser, the answer's file text and
// the error messages.
import assert from "node:assert/strict";
import { test } from "node:test";

import { HeadingScanner } from "../../studio/js/render.js";
import { parseOutline } from "../../studio/js/outline.js";
import { fileText } from "../../studio/js/stream.js";
import { explain } from "../../studio/js/messages.js";

const DOC = [
  "# Title",
  "",
  "## One",
  "```python",
  "# a comment, not a heading",
  "```",
  "~~~~",
  "## inside a tilde fence",
  "~~~",
  "## still inside: a shorter fence does not close it",
  "~~~~",
  "  ## indented: may belong to a list item",
  "### Two point one",
  "## Two ##",
  "",
].join("\n");

test("headings are found outside code fences only, unindented", () => {
  const scanner = new HeadingScanner();
  const found = scanner.scan(DOC);
  assert.deepEqual(
    found.map((h) => [h.level, h.text]),
    [[1, "Title"], [2, "One"], [3, "Two point one"], [2, "Two"]],
  );
  assert.equal(DOC.slice(found[1].offset).split("\n")[0], "## One");
});

test("scanning piece by piece finds the same headings, each once, and waits for a whole line", () => {
  const scanner = new HeadingScanner();
  let text = "";
  const found = [];
  for (const piece of DOC.match(/[\s\S]{1,3}/g)) {
    text += piece;
    found.push(...scanner.scan(text));
  }
  assert.deepEqual(found, new HeadingScanner().scan(DOC));
  const partial = new HeadingScanner();
  assert.deepEqual(partial.scan("## not yet a whole line"), []);
  assert.equal(partial.scan("## not yet a whole line\n").length, 1);
});

test("the outline is read from MetaGPT's JSON, after thinking or in a fence", () => {
  const json = '{"title": "Mastering MySQL", "directory": [{"Intro": ["What", "Why"]}, {"Setup": []}]}';
  const expected = {
    title: "Mastering MySQL",
    sections: [
      { name: "Intro", subs: ["What", "Why"] },
      { name: "Setup", subs: [] },
    ],
  };
  assert.deepEqual(parseOutline(json), expected);
  assert.deepEqual(parseOutline(`<think>a {brace} or two</think>\n\`\`\`json\n${json}\n\`\`\``), expected);
  assert.deepEqual(parseOutline(json.replace('{"title"', '{ "title"')), expected);
  assert.equal(parseOutline("Sorry, I cannot help with that."), null);
  assert.equal(parseOutline('{"title": "x", "directory": []}'), null);
  assert.equal(parseOutline('{"title": "x", "directory": [{"cut'), null);
});

test("the file is the text before the download link", () => {
  const file = { name: "a.md" };
  const text = "# T\n\nbody\n\n---\n\n[Download a.md](http://h/download/a.md)\n";
  assert.equal(fileText(text, file), "# T\n\nbody");
  assert.equal(fileText(text, null), text);
  assert.equal(fileText("# T\n", file), "# T\n");
});

test("each error says what to do, and keeps the gateway's code", () => {
  const busy = explain({ code: "rate_limit_exceeded", message: "Too many.", retryAfter: 7 });
  assert.equal(busy.code, "rate_limit_exceeded");
  assert.match(busy.text, /Try again in 7 s\./);
  assert.match(explain({ code: "upstream_status", message: "HTTP 500." }).text, /language model.*HTTP 500/);
  assert.match(explain({ code: "generation_timeout", message: "" }).text, /time limit/);
  assert.match(explain({ code: "connection_lost" }).text, /cancelled/);
  assert.match(explain({ code: "invalid_api_key" }).text, /API key/);
  assert.match(explain({ code: "something_new", message: "Odd." }).text, /\(Odd\)/);
});
