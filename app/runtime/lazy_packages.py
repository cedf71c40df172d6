"""Import a MetaGPT package without the siblings its `__init__` imports, until one is asked for.

MetaGPT's package `__init__`s import every module beside them: `metagpt.provider` all 13 LLM providers
and their SDKs (Gemini with IPython, ZhiPu, DashScope, Bedrock with botocore ...), `metagpt.actions`
and `metagpt.roles` every action and role, `metagpt.environment` every game environment, and
`metagpt.tools.libs` the data-science tools (pandas, scikit-learn, scipy, playwright). The gateway uses
two roles, their actions and the OpenAI provider; the rest costs every worker thousands of modules and
a good part of its memory (bench/PERFORMANCE.md).

A package named here is imported as MetaGPT defines it, minus the eager imports: each name its
`__init__` would import from a submodule is imported from that submodule on first use (PEP 562
`__getattr__`), and any other name (`metagpt.actions.ActionType`, `__all__`) runs the real `__init__`
once. So `from metagpt.provider import HumanProvider` and everything else keeps working.

A few libraries that modules the gateway does use import at their top with a plain `import x`, and use
only inside functions the gateway never calls, are deferred (`defer`): the stdlib's
`importlib.util.LazyLoader` loads such a module at the first use of one of its attributes.
"""

from __future__ import annotations

import ast
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

# NOTE: only packages whose `__init__` is imports of their own submodules (plus `__all__` and what is
# built from those imports); `metagpt.tools` itself defines enums used everywhere, so its `libs` is lazy.
METAGPT_LAZY_PACKAGES = (
    "metagpt.actions",
    "metagpt.environment",
    "metagpt.provider",
    "metagpt.roles",
    "metagpt.tools.libs",
)

# NOTE: a plain `import x` at the top of the importing module, and no use of `x` at import time, or it is
# loaded at once anyway. Who imports them: pandas via `metagpt.schema` -> `metagpt.repo_parser` (code
# parsing), python-docx `read_document`, anthropic `token_counter` (Claude's token count), requests and
# chardet `utils.common`. What each costs a worker: bench/PERFORMANCE.md.
METAGPT_DEFERRED_MODULES = ("pandas", "docx", "anthropic", "requests", "chardet")


def install(packages: Iterable[str] = METAGPT_LAZY_PACKAGES) -> list[str]:
    """Make the named packages lazy for every later import in this process. Idempotent.

    Returns the ones already imported the normal way (too late for them: they stay as they are).
    """
    return _register(_LazyPackageFinder, packages)


def defer(modules: Iterable[str] = METAGPT_DEFERRED_MODULES) -> list[str]:
    """Load each named module only when one of its attributes is first used. Idempotent.

    Returns the ones already imported the normal way (they stay as they are).
    """
    return _register(_DeferredFinder, modules)


def _register(kind: type[_NamedFinder], names: Iterable[str]) -> list[str]:
    """Add `names` to this process's finder of `kind` (inserted first on `sys.meta_path` once)."""
    finder = next((f for f in sys.meta_path if isinstance(f, kind)), None)
    if finder is None:
        finder = kind(frozenset())
        sys.meta_path.insert(0, finder)
    wanted = frozenset(names) - finder.names
    late = sorted(name for name in wanted if name in sys.modules)
    finder.names |= wanted - set(late)
    return late


def exports(package: str, source: str) -> dict[str, tuple[str, str | None]]:
    """What a package's `__init__` imports from its own submodules: name -> (module, attribute).

    `from pkg.sub import A as B` gives B -> (pkg.sub, A); `from pkg import sub` gives sub -> (pkg.sub,
    None), the submodule itself. Only top-level statements: an import under a condition is not an export.
    """
    found: dict[str, tuple[str, str | None]] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
            continue
        for alias in node.names:
            if node.module == package:
                found[alias.asname or alias.name] = (f"{package}.{alias.name}", None)
            elif node.module.startswith(package + "."):
                found[alias.asname or alias.name] = (node.module, alias.name)
    return found


class _NamedFinder(importlib.abc.MetaPathFinder):
    """Finds the modules in `names` as the path would, and gives them its own loader."""

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.names:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        return None if spec is None else self.adopt(spec)

    def adopt(self, spec: importlib.machinery.ModuleSpec) -> importlib.machinery.ModuleSpec | None:
        raise NotImplementedError


class _LazyPackageFinder(_NamedFinder):
    def adopt(self, spec: importlib.machinery.ModuleSpec) -> importlib.machinery.ModuleSpec | None:
        if spec.origin is None or spec.submodule_search_locations is None:
            return None  # not a package with an __init__.py: import it the normal way
        spec.loader = _LazyPackageLoader()
        return spec


class _DeferredFinder(_NamedFinder):
    def adopt(self, spec: importlib.machinery.ModuleSpec) -> importlib.machinery.ModuleSpec | None:
        if not isinstance(spec.loader, importlib.abc.Loader):
            return None
        spec.loader = importlib.util.LazyLoader(spec.loader)
        return spec


class _LazyPackageLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None  # the default module object

    def exec_module(self, module: ModuleType) -> None:
        origin = module.__spec__.origin  # type: ignore[union-attr]
        assert origin is not None
        source = Path(origin).read_text(encoding="utf-8")
        resolver = _Resolver(module, exports(module.__name__, source), source)
        module.__getattr__ = resolver  # type: ignore[method-assign]
        module.__dir__ = resolver.names  # type: ignore[method-assign]


class _Resolver:
    """The lazy package's `__getattr__`: called only for names not yet in its namespace."""

    def __init__(self, module: ModuleType, exported: dict[str, tuple[str, str | None]], init: str) -> None:
        self.module = module
        self.exported = exported
        self.init: str | None = init  # the real __init__'s source, until it has run

    def __call__(self, name: str) -> Any:
        if name in self.exported:
            source, attribute = self.exported[name]
            submodule = importlib.import_module(source)
            value = submodule if attribute is None else getattr(submodule, attribute)
            setattr(self.module, name, value)
            return value
        if self.init is not None and (name == "__all__" or not name.startswith("__")):
            init, self.init = self.init, None
            code = compile(init, self.module.__spec__.origin or self.module.__name__, "exec")  # type: ignore[union-attr]
            exec(code, self.module.__dict__)  # the real __init__, once: defines everything it defines
            if name in self.module.__dict__:
                return self.module.__dict__[name]
        raise AttributeError(f"module {self.module.__name__!r} has no attribute {name!r}")

    def names(self) -> list[str]:
        """The package's `__dir__`: what is defined so far and every name it will resolve."""
        return sorted(set(self.module.__dict__) | set(self.exported))
