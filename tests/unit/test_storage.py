import os

import pytest

from app.storage import SLUG_MAX_CHARS, FileStore, is_valid_name, slugify


@pytest.mark.parametrize(
    ("title", "slug"),
    [
        ("A Practical Guide to MySQL", "A-Practical-Guide-to-MySQL"),
        ("../../../escaped", "escaped"),
        ("a/b\\c", "a-b-c"),
        ("nul\x00byte", "nul-byte"),
        ("  ..  ", "tutorial"),
        ("", "tutorial"),
        ("MySQL 教程", "MySQL-教程"),
        ("C++ & C#: a_b", "C-C-a-b"),
        ("/etc/passwd", "etc-passwd"),
        ("x" * 500, "x" * SLUG_MAX_CHARS),
    ],
)
def test_slugify(title, slug):
    assert slugify(title) == slug


@pytest.mark.parametrize(
    "title", ["../../../escaped", "a/b", "x\x00y", "y" * 500, "..", "\u202e\u0000/\\", "CON", "-leading"]
)
def test_new_names_are_valid_and_unique(title, tmp_path):
    store = FileStore(tmp_path)
    a, b = store.new_name(title), store.new_name(title)
    assert a != b and is_valid_name(a) and is_valid_name(b)
    assert len(a.encode()) < 255 and "/" not in a and not a.startswith(".")


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".md",
        "../x-" + "0" * 32 + ".md",
        "a-" + "0" * 32 + ".txt",
        "a-" + "0" * 31 + ".md",
        ".hidden-" + "0" * 32 + ".md",
        "a/b-" + "0" * 32 + ".md",
        "a\x00-" + "0" * 32 + ".md",
        "a-" + "0" * 32 + ".md/",
        "a-" + "G" * 32 + ".md",
    ],
)
def test_invalid_names(name):
    assert not is_valid_name(name)


def test_write_is_atomic_and_leaves_no_temp(tmp_path):
    store = FileStore(tmp_path)
    name = store.new_name("T")
    path = store.write(name, b"# T\n\nbody")
    assert path.parent == tmp_path and path.read_text() == "# T\n\nbody"
    assert os.listdir(tmp_path) == [name]
    assert store.resolve(name) == path


def test_write_refuses_unsafe_names(tmp_path):
    with pytest.raises(ValueError):
        FileStore(tmp_path).write("../evil.md", b"x")


def test_resolve_refuses_symlinks_dirs_and_missing(tmp_path):
    store = FileStore(tmp_path)
    outside = tmp_path.parent / "secret.txt"
    outside.write_text("secret")
    link = "link-" + "a" * 32 + ".md"
    (tmp_path / link).symlink_to(outside)
    folder = "dir-" + "b" * 32 + ".md"
    (tmp_path / folder).mkdir()
    assert store.resolve(link) is None
    assert store.resolve(folder) is None
    assert store.resolve("none-" + "c" * 32 + ".md") is None
    assert store.resolve("../secret.txt") is None
