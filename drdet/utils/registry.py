"""Registries: name -> builder tables that the components fill in themselves.

A component registers itself where it is defined::

    from drdet.modeling.registry import CLASSIFICATION_LOSSES

    @CLASSIFICATION_LOSSES.register("BCE")
    def build_bce_loss(cfg):
        ...

and the config names it (``MODEL.RETINANET.LOSS_TYPE: BCE``). Adding a loss, a backbone, a
dataset type, an evaluator or a detector is one new file plus one registration; no list elsewhere
has to be edited. A registry that names its config keys lets :func:`drdet.config.validate_cfg`
check those keys against what is registered, with an error that lists the registered names.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

# Every live registry; validate_cfg walks the ones with config keys. Weak, so that a registry made
# for a while (a test's) leaves no trace.
_ALL: weakref.WeakSet[Registry] = weakref.WeakSet()


class Registry:
    """A name -> object table.

    Args:
        name: what the table holds, for messages ("classification loss").
        config_keys: full config keys whose value must be a registered name
            (e.g. ``("MODEL.RETINANET.LOSS_TYPE",)``).
    """

    def __init__(self, name: str, config_keys: Sequence[str] = ()) -> None:
        self.name = name
        self.config_keys: list[str] = list(config_keys)
        self._table: dict[str, Any] = {}
        _ALL.add(self)

    def add_config_key(self, full_key: str) -> None:
        """Another config key whose value must be a name of this registry (e.g. a second
        detector's ``MODEL.FCOS.LOSS_TYPE``)."""
        if full_key not in self.config_keys:
            self.config_keys.append(full_key)

    def register(self, name: str, obj: T | None = None) -> Any:
        """``REG.register("NAME", obj)``, or ``@REG.register("NAME")`` as a decorator.

        Registering a name twice is an error: a second component would silently replace the
        first."""

        def add(o: T) -> T:
            if name in self._table and self._table[name] is not o:
                raise KeyError(
                    f"{self.name} {name!r} is already registered "
                    f"(by {_describe(self._table[name])})"
                )
            self._table[name] = o
            return o

        if obj is not None:
            return add(obj)
        return add

    def unregister(self, name: str) -> Any:
        """Removes ``name`` and returns what it held (e.g. to replace a built-in component)."""
        return self._table.pop(name)

    def get(self, name: str) -> Any:
        """The object registered as ``name``; KeyError listing the registered names otherwise."""
        try:
            return self._table[name]
        except KeyError:
            raise KeyError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        keys = f" ({', '.join(self.config_keys)})" if self.config_keys else ""
        return f"unknown {self.name} {name!r}{keys}; registered: {', '.join(self.names())}"

    def names(self) -> list[str]:
        return sorted(self._table)

    def __contains__(self, name: object) -> bool:
        return name in self._table

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._table)

    def __repr__(self) -> str:
        return f"Registry({self.name!r}, {self.names()})"


def registries() -> list[Registry]:
    """Every live registry, by name."""
    return sorted(_ALL, key=lambda r: r.name)


def _describe(obj: Callable[..., Any]) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
