"""One way to plug things in: claim kinds, attacks, attack libraries, certifiers, report sections.

Each pluggable thing is a small class (or object) that declares its name once.  Built-ins
register themselves when their module is imported (a decorator, :meth:`Registry.register`);
a third-party package adds one through the registry's entry-point group, whose entry name is
the plug-in's name and whose value is the object::

    [project.entry-points."segaudit.attacks"]
    my-attack = "my_package.attacks:MyAttack"

Entry points are loaded only when their name is asked for (or the whole list is), so a
broken or heavy third-party plug-in costs nothing until it is used.  Torch-free.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator, Sequence
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Plug-ins of one kind by name, in registration order (built-ins first).

    ``builtins`` names packages whose modules are imported (each registering what it
    defines) before the first lookup; ``group`` is the entry-point group of third parties.
    """

    def __init__(
        self,
        what: str,
        group: str,
        *,
        builtins: Sequence[str] = (),
        name_of: Callable[[Any], str] = lambda obj: obj.name,
    ) -> None:
        self.what = what
        self.group = group
        self._builtins = tuple(builtins)
        self._name_of = name_of
        self._items: dict[str, T] = {}
        self._entry_points: dict[str, Any] | None = None
        self._loading = False

    def register(self, obj: T, *, before: str | None = None, after: str | None = None) -> T:
        """Add ``obj`` under its name (a class decorator); ``before``/``after`` place it next
        to another entry (order matters where it is shown, as for report sections)."""
        name = self._name_of(obj)
        existing = self._items.get(name)
        if existing is not None and existing is not obj:
            raise ValueError(f"{self.what} {name!r} registered twice: {existing!r} and {obj!r}")
        if before is not None and after is not None:
            raise ValueError(f"{self.what} {name!r}: give at most one of before= and after=")
        anchor = before if before is not None else after
        if anchor is None:
            self._items[name] = obj
            return obj
        if anchor not in self._items:
            raise ValueError(
                f"no {self.what} {anchor!r} to place {name!r} next to; have {list(self._items)}"
            )
        items = [(k, v) for k, v in self._items.items() if k != name]
        at = [k for k, _ in items].index(anchor) + (0 if before is not None else 1)
        items.insert(at, (name, obj))
        self._items = dict(items)
        return obj

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests; a plug-in being unloaded)."""
        if self._items.pop(name, None) is None:
            raise KeyError(f"no {self.what} {name!r} is registered")

    def get(self, name: str) -> T:
        """The plug-in called ``name``; ``KeyError`` naming the known ones if there is none."""
        self._load_builtins()
        if name not in self._items:
            ep = self._third_party().get(name)
            if ep is not None:
                self._load_entry_point(name, ep)
        if name not in self._items:
            raise KeyError(f"unknown {self.what} {name!r}; known: {', '.join(self.names())}")
        return self._items[name]

    def names(self) -> tuple[str, ...]:
        """Every name: registered ones, then third-party ones not loaded yet."""
        self._load_builtins()
        return (*self._items, *(n for n in self._third_party() if n not in self._items))

    def items(self) -> Iterator[tuple[str, T]]:
        """Every plug-in with its name, third-party ones loaded."""
        for name in self.names():
            yield name, self.get(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def _load_builtins(self) -> None:
        if self._loading:
            return
        self._loading = True  # a built-in module registering itself calls back in here
        for package in self._builtins:
            module = importlib.import_module(package)
            for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
                importlib.import_module(f"{package}.{info.name}")
        self._builtins = ()
        self._loading = False

    def _third_party(self) -> dict[str, Any]:
        if self._entry_points is None:
            self._entry_points = {ep.name: ep for ep in entry_points(group=self.group)}
        return self._entry_points

    def _load_entry_point(self, name: str, ep: Any) -> None:
        obj = ep.load()
        if name not in self._items:  # the module may have registered it on import
            if self._name_of(obj) != name:
                raise ValueError(
                    f"entry point {name!r} in group {self.group!r} loads {obj!r}, whose "
                    f"name is {self._name_of(obj)!r}: the entry point's name must be the "
                    f"{self.what}'s name"
                )
            self.register(obj)
