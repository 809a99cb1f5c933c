"""Named entries that the modules of one package add when imported: the judges, evaluators and trackers.

A `Registry` finds its modules by listing its package (`pkgutil`), so adding an entry is one new module there, with
no list to edit. Discovery imports only those modules, so they must not import a model library at import time
(`harness report` and `harness grid` load no torch). A name is one module's: a second module registering it is an
error; an unknown name is one line listing the valid ones.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

Spec = TypeVar("Spec")


class Registry(Generic[Spec]):
    """`kind` names the entries in messages ("judge"); `first` is listed before the others (a default)."""

    def __init__(self, package: str, path: Iterable[str], kind: str, first: str | None = None) -> None:
        self.package, self.path, self.kind, self.first = package, list(path), kind, first
        self._specs: dict[str, Spec] = {}
        self._owners: dict[str, str] = {}
        self._discovered = False

    def copy(self, path: Iterable[str]) -> Registry[Spec]:
        """The same entries over another search path, listed again when next asked (a test's extra modules)."""
        other: Registry[Spec] = Registry(self.package, path, self.kind, self.first)
        other._specs, other._owners = dict(self._specs), dict(self._owners)
        return other

    def add(self, name: str, spec: Spec, module: str) -> Spec:
        """Called by a module of the package at import: `module` is the caller's `__name__` (its owner)."""
        owner = self._owners.get(name)
        if owner is not None and owner != module:
            raise ValueError(f"{self.kind} {name!r} is registered twice ({owner}, {module})")
        self._specs[name], self._owners[name] = spec, module
        return spec

    def specs(self) -> dict[str, Spec]:
        if not self._discovered:
            for module in pkgutil.iter_modules(self.path):
                if not module.name.startswith("_"):
                    importlib.import_module(f"{self.package}.{module.name}")
            self._discovered = True
        return self._specs

    def names(self, key: Callable[[str], object] | None = None) -> tuple[str, ...]:
        """Every registered name: `first` first, then by name."""
        return tuple(sorted(self.specs(), key=key or (lambda n: (n != self.first, n))))

    def get(self, name: str, what: str | None = None) -> Spec:
        """The entry `name`; a ValueError listing the valid names when there is none. `what` is how the message
        names the value (default "KIND 'NAME'")."""
        specs = self.specs()
        if name not in specs:
            raise ValueError(f"{what or f'{self.kind} {name!r}'} is not known; valid {self.kind}s: "
                             f"{', '.join(self.names())}")
        return specs[name]
