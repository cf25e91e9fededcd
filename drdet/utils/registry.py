"""Registries: name -> builder tables that the components fill in themselves.

A component registers itself where it is defined::

    from drdet.modeling.registry import CLASSIFICATION_LOSSES

    @CLASSIFICATION_LOSSES.register("BCE", check=check_bce_cfg)
    def build_bce_loss(cfg):
        ...

and the config names it (``MODEL.RETINANET.LOSS_TYPE: BCE``). Adding a loss, a backbone, a
dataset type, an evaluator or a detector is one new file plus one registration; no list elsewhere
has to be edited. A registry knows which config keys select its entries (``config_keys``, or a
``select`` function of the config), so that :func:`drdet.config.validate_cfg` can check that
they name registered entries, with an error listing them, and run the ``check`` of each
selected entry on its own keys.

The built-in entries are registered when their packages are imported. drdet's top-level
package names those packages once (:func:`set_builtin_loader`), and :func:`load_builtins`
imports them, so that the config layer, which imports nothing above it, finds every built-in
part registered.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from drdet.utils.checks import require

T = TypeVar("T")
ConfigCheck = Callable[[Any], None]

# Every live registry; validate_cfg walks them. Weak, so that a registry made for a while (a
# test's) leaves no trace.
_ALL: weakref.WeakSet[Registry] = weakref.WeakSet()


class Registry:
    """A name -> object table.

    Args:
        name: what the table holds, for messages ("classification loss").
        config_keys: full config keys whose value must be a registered name
            (e.g. ``("MODEL.META_ARCHITECTURE",)``).
        select: ``select(cfg) -> [full key, ...]``: more such keys, chosen by the config itself
            (the classification loss is named by the key of the detector the config builds).
    """

    def __init__(
        self,
        name: str,
        config_keys: Sequence[str] = (),
        select: Callable[[Any], Sequence[str]] | None = None,
    ) -> None:
        self.name = name
        self.config_keys: list[str] = list(config_keys)
        self.select = select
        self._table: dict[str, Any] = {}
        self._checks: dict[str, ConfigCheck] = {}
        _ALL.add(self)

    def register(self, name: str, obj: T | None = None, *, check: ConfigCheck | None = None) -> Any:
        """``REG.register("NAME", obj)``, or ``@REG.register("NAME")`` as a decorator.

        ``check(cfg)``: validates the config keys this entry reads (ValueError naming the key);
        :meth:`check_cfg` runs it when the config selects the entry. Registering a name twice
        is an error: a second component would silently replace the first."""

        def add(o: T) -> T:
            if name in self._table and self._table[name] is not o:
                raise KeyError(
                    f"{self.name} {name!r} is already registered "
                    f"(by {_describe(self._table[name])})"
                )
            self._table[name] = o
            if check is not None:
                self._checks[name] = check
            return o

        if obj is not None:
            return add(obj)
        return add

    def unregister(self, name: str) -> Any:
        """Removes ``name`` (and its check) and returns what it held."""
        self._checks.pop(name, None)
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

    def selected_keys(self, cfg) -> list[str]:
        """The config keys whose values select entries of this registry in ``cfg``."""
        return self.config_keys + list(self.select(cfg) if self.select else ())

    def check_cfg(self, cfg) -> None:
        """Each selecting key must name a registered entry (ValueError naming the key and the
        registered names); then the check of each selected entry runs on ``cfg``."""
        for full_key in self.selected_keys(cfg):
            value = config_value(cfg, full_key)
            require(
                value in self,
                full_key,
                value,
                f"must be a registered {self.name}: one of {self.names()}",
            )
            check = self._checks.get(value)
            if check is not None:
                check(cfg)

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


def config_value(cfg, full_key: str) -> Any:
    """``cfg``'s value at "A.B.C"."""
    node = cfg
    for part in full_key.split("."):
        node = node[part]
    return node


_builtin_loader: Callable[[], None] | None = None
_builtins_state = "not loaded"


def set_builtin_loader(loader: Callable[[], None]) -> None:
    """The function that imports the packages registering drdet's built-in parts (set once, by
    drdet/__init__.py, the package above every layer)."""
    global _builtin_loader
    _builtin_loader = loader


def load_builtins() -> None:
    """Registers the built-in parts, once (a no-op while that import is under way)."""
    global _builtins_state
    if _builtins_state != "not loaded" or _builtin_loader is None:
        return
    _builtins_state = "loading"
    try:
        _builtin_loader()
    except BaseException:
        _builtins_state = "not loaded"
        raise
    _builtins_state = "loaded"


def _describe(obj: Callable[..., Any]) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
