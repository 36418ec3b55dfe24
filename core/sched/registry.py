"""Name registries for the scheduler's pluggable policies (queue and interception policies).

A registry maps a name to a factory. Core registers its interfaces' reference implementations
and the shared baselines; a paper's own policy lives in its artifact and registers its name
when that module is imported. A spec is a registered name or an import path
``"package.module:attr"`` naming a factory (usually the class) directly, which needs no
registration.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, MutableMapping
from typing import Any, TypeVar

__all__ = ["register", "resolve"]

F = TypeVar("F", bound=Callable[..., Any])


def register(registry: MutableMapping[str, F], kind: str, name: str, factory: F) -> None:
    """Add ``name -> factory`` to ``registry``. Registering the same factory again (a module
    imported twice, or reloaded) is a no-op; a name taken by another factory raises ValueError."""
    if not name or ":" in name:
        raise ValueError(f"{kind} name must be non-empty and without ':', got {name!r}")
    old = registry.get(name)
    if old is not None and _qualname(old) != _qualname(factory):
        raise ValueError(f"{kind} {name!r} is already registered to {_qualname(old)}")
    registry[name] = factory


def resolve(registry: MutableMapping[str, F], kind: str, spec: str, hint: str = "") -> F:
    """The factory registered as ``spec``, or the object an import path ``"module:attr"`` names.

    An unknown name raises ValueError listing the known names, then ``hint``; an import path
    whose module or attribute is missing raises ValueError naming it."""
    if spec in registry:
        return registry[spec]
    if ":" not in spec:
        known = ", ".join(registry)
        raise ValueError(f"unknown {kind} {spec!r} (known: {known}){hint}")
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"{kind} {spec!r}: cannot import module {module_name!r} ({e})") from e
    try:
        obj: F = getattr(module, attr)
    except AttributeError:
        raise ValueError(f"{kind} {spec!r}: module {module_name!r} has no {attr!r}") from None
    if not callable(obj):
        raise ValueError(f"{kind} {spec!r}: {attr!r} is not callable")
    return obj


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
