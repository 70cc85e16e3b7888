"""One tiny registry class for every kind of named thing in normlab (norms, instruments, models, datasets,
experiments), after fvcore's Registry. Each entry is registered where it is defined:

    MODELS = Registry("model")

    @MODELS.register("mlp")
    def _mlp(...): ...

    MODELS.get("mlp")      # the object; ValueError naming the valid names for an unknown one
    MODELS.names()         # in registration order

Imports nothing of normlab, so every level of the package may hold a registry.
"""
from __future__ import annotations

from typing import Any, Iterator


class Registry:
    """name -> object, for one kind of thing (`kind` names it in error messages). Names are unique; order is kept."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Any] = {}

    def register(self, name: str, obj: Any = None) -> Any:
        """Add `obj` under `name`; without `obj`, a decorator that adds what it decorates (and returns it unchanged).

        A name registered twice is a ValueError (two definitions of one thing, one would silently win)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"name: expected a non-empty string for the {self.kind}, got {name!r}")

        def add(o: Any) -> Any:
            if name in self._items:
                raise ValueError(f"name: {self.kind} {name!r} is already registered ({self._items[name]!r})")
            self._items[name] = o
            return o
        return add if obj is None else add(obj)

    def get(self, name: str, argument: str | None = None) -> Any:
        """The object registered as `name`; otherwise a ValueError that names the argument (default: the kind) and
        the valid names, e.g. "name: unknown model 'vit'; valid: mlp, vgg, linear, resnet"."""
        if not isinstance(name, str) or name not in self._items:
            raise ValueError(f"{argument or self.kind}: unknown {self.kind} {name!r}; valid: {', '.join(self._items)}")
        return self._items[name]

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._items)

    def unregister(self, name: str) -> None:
        """Remove `name` (tests that register a throwaway entry clean up with it)."""
        self.get(name)
        del self._items[name]

    def items(self) -> list[tuple[str, Any]]:
        return list(self._items.items())

    def __getitem__(self, name: str) -> Any:   # read as a mapping: dict(registry) is a plain copy
        return self.get(name)

    def __setitem__(self, name: str, obj: Any) -> None:
        self.register(name, obj)

    def keys(self) -> list[str]:
        return self.names()

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._items)})"


