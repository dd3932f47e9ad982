"""A registry: items by name, in the order registered (site methods, model families)."""

from typing import Generic, TypeVar

from layerlens.errors import LayerLensError

T = TypeVar("T")


class Registry(dict[str, T], Generic[T]):
    """A dict of `what`s (instances of `kind`, each with a `name`) that refuses a second item of one name."""

    def __init__(self, what: str, kind: type[T]):
        super().__init__()
        self.what, self.kind = what, kind

    def register(self, item: T) -> T:
        if not isinstance(item, self.kind):
            raise LayerLensError(f"a {self.what} registered must be a {self.kind.__name__}, got {item!r}")
        name = item.name  # type: ignore[attr-defined]
        if name in self:
            raise LayerLensError(f"{self.what} {name!r} is registered already")
        self[name] = item
        return item

    def unregister(self, name: str) -> T:
        if name not in self:
            raise LayerLensError(f"{self.what} {name!r} is not registered")
        return self.pop(name)
