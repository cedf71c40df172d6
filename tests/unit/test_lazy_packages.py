"""Lazy MetaGPT packages: a package imports its siblings only when one is asked for, and keeps every name;
deferred modules run only when one of their attributes is used."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from app.runtime import lazy_packages


def test_exports_are_the_top_level_imports_from_own_submodules():
    source = textwrap.dedent(
        """
        import os
        from enum import Enum
        from pkg.a import A, B as Bee
        from pkg import sub
        from .rel import R
        if os.environ:
            from pkg.c import C
        KIND = A
        """
    )
    assert lazy_packages.exports("pkg", source) == {
        "A": ("pkg.a", "A"),
        "Bee": ("pkg.a", "B"),
        "sub": ("pkg.sub", None),
    }


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A throwaway package whose __init__ imports two siblings, each recording that it was imported."""
    name = f"lazy_probe_{tmp_path.name.replace('-', '_')}"
    root = tmp_path / name
    root.mkdir()
    (root / "__init__.py").write_text(
        textwrap.dedent(
            f"""
            from {name}.light import Light
            from {name}.heavy import Heavy
            from {name} import tool
            KINDS = (Light, Heavy)
            __all__ = ["Light", "Heavy", "KINDS"]
            """
        )
    )
    for sub, cls in (("light", "Light"), ("heavy", "Heavy"), ("tool", "Tool")):
        (root / f"{sub}.py").write_text(
            f"import builtins\nbuiltins.LAZY_PROBE.append({sub!r})\nclass {cls}: pass\n"
        )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr("builtins.LAZY_PROBE", [], raising=False)
    assert lazy_packages.install([name]) == []
    yield name
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module]


def imported() -> list[str]:
    import builtins

    return builtins.LAZY_PROBE  # type: ignore[attr-defined,no-any-return]


def test_importing_the_package_imports_no_sibling(package):
    module = __import__(package)
    assert imported() == []
    assert module.__path__ and module.__file__.endswith("__init__.py")
    assert {"Light", "Heavy", "tool"} <= set(dir(module)) and imported() == []


def test_an_exported_name_imports_only_its_submodule(package):
    exec(f"from {package} import Light", namespace := {})
    assert namespace["Light"].__module__ == f"{package}.light"
    assert imported() == ["light"]
    exec(f"from {package} import tool", namespace)
    assert namespace["tool"].Tool and imported() == ["light", "tool"]


def test_any_other_name_runs_the_real_init_once(package):
    module = __import__(package)
    assert [k.__name__ for k in module.KINDS] == ["Light", "Heavy"]
    assert sorted(imported()) == ["heavy", "light", "tool"]
    assert module.__all__ == ["Light", "Heavy", "KINDS"]
    with pytest.raises(AttributeError, match="has no attribute 'missing'"):
        _ = module.missing
    with pytest.raises(ImportError):
        exec(f"from {package} import missing")


def test_star_import_sees_all(package):
    exec(f"from {package} import *", namespace := {})
    assert {"Light", "Heavy", "KINDS"} <= set(namespace)


def test_a_package_imported_already_is_left_as_it_is():
    assert lazy_packages.install(["json"]) == ["json"]


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A throwaway module that records each time its body runs."""
    name = f"deferred_probe_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text("import builtins\nbuiltins.LAZY_PROBE.append('ran')\nVALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr("builtins.LAZY_PROBE", [], raising=False)
    yield name
    sys.modules.pop(name, None)


def test_a_deferred_module_runs_at_its_first_attribute_use_only(module):
    assert lazy_packages.defer([module]) == []
    assert lazy_packages.defer([module]) == []  # idempotent: still ours, not "imported too late"
    exec(f"import {module}", namespace := {})
    assert imported() == []
    assert namespace[module].VALUE == 42
    assert imported() == ["ran"]
    exec(f"from {module} import VALUE", namespace)
    assert namespace["VALUE"] == 42 and imported() == ["ran"]


def test_a_module_imported_already_is_not_deferred():
    assert lazy_packages.defer(["json"]) == ["json"]
    assert type(sys.modules["json"]).__name__ == "module"
