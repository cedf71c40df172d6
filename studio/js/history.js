// The tutorials ordered from this browser (localStorage), newest first, with their download links.

const STORAGE = "studio.history";
const KEEP = 50;

export class History {
  constructor(list, empty, clear) {
    this.list = list;
    this.empty = empty;
    this.clear = clear;
    clear.addEventListener("click", () => {
      localStorage.removeItem(STORAGE);
      this.render();
    });
  }

  entries() {
    try {
      const entries = JSON.parse(localStorage.getItem(STORAGE) ?? "[]");
      return Array.isArray(entries) ? entries.filter((e) => e && typeof e.url === "string") : [];
    } catch {
      return [];
    }
  }

  add(entry) {
    const entries = [entry, ...this.entries().filter((e) => e.url !== entry.url)].slice(0, KEEP);
    try {
      localStorage.setItem(STORAGE, JSON.stringify(entries));
    } catch {
      // storage full or disabled: the list is only a convenience
    }
    this.render();
  }

  render() {
    const entries = this.entries();
    this.list.replaceChildren(...entries.map(item));
    this.empty.hidden = entries.length > 0;
    this.clear.hidden = entries.length === 0;
  }
}

function item(entry) {
  const li = document.createElement("li");
  const link = document.createElement("a");
  link.href = entry.url;
  link.download = entry.name ?? "";
  link.textContent = entry.title || entry.name || entry.url;
  const meta = document.createElement("span");
  meta.className = "meta";
  const when = new Date(entry.at ?? 0).toLocaleString();
  const size = entry.bytes ? `${Math.max(1, Math.round(entry.bytes / 1024))} KB` : "";
  meta.textContent = [when, size, entry.model].filter(Boolean).join(" · ");
  li.append(link, " ", meta);
  // A signed link (gateways with API keys) stops working when it expires.
  const expires = Number(new URL(entry.url, location.href).searchParams.get("expires"));
  if (expires && expires * 1000 < Date.now()) {
    const note = document.createElement("span");
    note.className = "meta expired";
    note.textContent = " · link expired";
    li.append(note);
  }
  return li;
}
