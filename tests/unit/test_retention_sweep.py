"""Retention's sweep (app.retention.sweep): by age, then by size oldest first, never inside the grace."""

from __future__ import annotations

import os
from pathlib import Path

from app.retention import sweep

NOW = 1_800_000_000.0
MIN = 60


def put(folder: Path, name: str, size: int, age: float) -> None:
    path = folder / name
    path.write_bytes(b"x" * size)
    os.utime(path, (NOW - age, NOW - age))


def name(slug: str) -> str:
    return f"{slug}-{slug.encode().hex().ljust(32, '0')[:32]}.md"


def test_age_then_size_oldest_first_sparing_fresh_files_and_foreign_ones(tmp_path):
    put(tmp_path, name("expired"), 1000, 120 * MIN)
    for minutes in (10, 20, 30, 40, 50):
        put(tmp_path, name(f"m{minutes}"), 60_000, minutes * MIN)
    put(tmp_path, name("fresh"), 100_000, 0)  # inside the grace: kept even past the cap
    put(tmp_path, ".0badc0de.tmp", 10, 120 * MIN)  # a crashed write's leftover
    put(tmp_path, ".0000beef.tmp", 10, 0)  # a write under way
    put(tmp_path, "notes.txt", 10, 999 * MIN)  # not a name the gateway writes: never touched

    result = sweep(tmp_path, max_age=60 * MIN, max_bytes=200_000, grace=5 * MIN, now=NOW)

    assert result.removed == {"age": [1000], "size": [60_000] * 4, "temp": [10]}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [name("fresh"), name("m10"), ".0000beef.tmp", "notes.txt"]
    )
    assert (result.kept_files, result.kept_bytes) == (2, 160_000)


def test_nothing_inside_the_grace_goes_whatever_the_limits(tmp_path):
    put(tmp_path, name("just-linked"), 5000, 30)
    result = sweep(tmp_path, max_age=10, max_bytes=1, grace=60, now=NOW)
    assert result.removed == {"age": [], "size": [], "temp": []}
    assert (result.kept_files, result.kept_bytes) == (1, 5000)


def test_zero_turns_a_limit_off(tmp_path):
    put(tmp_path, name("old"), 5000, 10_000 * MIN)
    result = sweep(tmp_path, max_age=0, max_bytes=0, grace=0, now=NOW)
    assert result.kept_files == 1 and not any(result.removed.values())
