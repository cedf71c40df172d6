"""Where files go (tutorials, teaching plans): the `TutorialStore` interface, and its folder backend with
safe unique names, atomic writes, and lookups that cannot leave the folder. The S3 backend, for several
hosts, is `app.object_store.ObjectStore`.

The service, not the LLM, chooses every path. A name is `<slug of the title>-<uuid4 hex>.md`: the slug
keeps only word characters and dashes, so `/`, `..`, NUL and control characters cannot survive it, and
the 122 random bits of the uuid make names unique and unguessable.
"""

from __future__ import annotations

import os
import re
import unicodedata
import uuid
from pathlib import Path
from typing import Protocol

SLUG_MAX_CHARS = 60  # at most 240 bytes of UTF-8 with the suffix: under every filesystem's 255
NAME_RE = re.compile(rf"^[^\W_][\w-]{{0,{SLUG_MAX_CHARS - 1}}}-[0-9a-f]{{32}}\.md$")


def slugify(title: str, default: str = "tutorial") -> str:
    text = unicodedata.normalize("NFKC", title)
    text = re.sub(r"[^\w\s-]", " ", text).replace("_", " ")
    text = re.sub(r"[\s-]+", "-", text).strip("-")[:SLUG_MAX_CHARS].strip("-")
    return text or default


def is_valid_name(name: str) -> bool:
    return bool(NAME_RE.fullmatch(name)) and "\x00" not in name


def is_temp_name(name: str) -> bool:
    """A file `FileStore.write` is still writing (or left behind when its process died)."""
    return name.startswith(".") and name.endswith(".tmp")


def new_name(title: str, default: str = "tutorial") -> str:
    """A fresh name for a Markdown file titled `title` (`default` when no word of it survives)."""
    return f"{slugify(title, default)}-{uuid.uuid4().hex}.md"


class TutorialStore(Protocol):
    """What a generation's file is written to. Names come from `new_name`; `write` blocks (run it off
    the loop) and raises OSError; a reader sees a file whole or not at all."""

    backend: str  # "local" or "s3": the label of storage metrics

    def write(self, name: str, data: bytes) -> object: ...

    def present(self) -> bool: ...

    def has_room(self, margin: int) -> bool: ...

    def free_bytes(self) -> int | None: ...


class FileStore:
    backend = "local"

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def ensure(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)

    def new_name(self, title: str, default: str = "tutorial") -> str:
        return new_name(title, default)

    def present(self) -> bool:
        return self.folder.is_dir()

    def write(self, name: str, data: bytes) -> Path:
        """Write `data` so that readers see either no file or the whole file, never a part."""
        if not is_valid_name(name):
            raise ValueError(f"unsafe tutorial name {name!r}")
        final = self.folder / name
        # A dot-name never matches NAME_RE, so a half-written temporary file can't be downloaded.
        temp = self.folder / f".{uuid.uuid4().hex}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, final)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return final

    def free_bytes(self) -> int:
        """Free space an unprivileged writer may use in the folder's filesystem."""
        stat = os.statvfs(self.folder)
        return stat.f_bavail * stat.f_frsize

    def has_room(self, margin: int) -> bool:
        """Whether at least `margin` bytes are free (always, for a margin of 0); raises OSError."""
        return not margin or self.free_bytes() >= margin

    def resolve(self, name: str) -> Path | None:
        """The path of a downloadable file, or None: bad names, links and non-files are refused."""
        if not is_valid_name(name):
            return None
        path = self.folder / name
        try:
            if path.is_symlink() or not path.is_file():
                return None
        except OSError:
            return None
        return path
