"""Names a package exports but imports on first use (PEP 562), so that importing the package stays cheap."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def exports(package: str, homes: dict[str, str], packages: tuple[str, ...] = ()) -> Callable[[str], Any]:
    """A module `__getattr__` for `package`: each name of `homes` from its home module (relative to the package),
    each of `packages` as the subpackage itself."""

    def __getattr__(name: str) -> Any:
        if name in packages:
            return importlib.import_module(f"{package}.{name}")
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{homes[name]}"), name)

    return __getattr__
