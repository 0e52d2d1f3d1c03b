"""One registry for every kind of named part: datasets, architectures, post-processors and
fingerprint methods.

After timm's ``register_model`` / ``create_model``: a part is a function registered under a name;
a config names it and gives its keyword arguments, which are checked against the function's
signature before anything runs, so that a typo in a config key fails at once, naming the key and
what the part takes. Each kind of part says which leading parameters the pipeline itself passes
(the model, the data, ...); those are never config keys, and every function registered must take
them under those names, so that a registry and its functions cannot drift apart.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from ipguard.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])


class Registry(Generic[F]):
    """Named functions of one kind.

    ``kind`` names them in messages ("fingerprint method"); ``leading`` are the parameters every
    entry takes first, passed by the pipeline rather than by a config; ``hint`` ends the "known:"
    list of an unknown name (other ways to name a part, such as ``timm/<name>``).
    """

    def __init__(self, kind: str, leading: tuple[str, ...] = (), hint: str = "") -> None:
        self.kind = kind
        self.leading = leading
        self.hint = hint
        self._entries: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator: add ``fn`` under ``name``; a second function under the same name is an error."""

        def wrap(fn: F) -> F:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is already registered ({self._entries[name].__qualname__})")
            params = list(inspect.signature(fn).parameters)
            if tuple(params[: len(self.leading)]) != self.leading:
                raise ValueError(
                    f"{self.kind} '{name}': {fn.__qualname__} must take ({', '.join(self.leading)}) first, "
                    f"takes ({', '.join(params[: len(self.leading)])})"
                )
            self._entries[name] = fn
            return fn

        return wrap

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str, where: str) -> F:
        """The function under ``name``; an unknown name is a :class:`ConfigError` at ``where``."""
        if name not in self._entries:
            raise ConfigError(f"{where}: unknown {self.kind} '{name}' (known: {', '.join(self.names())}{self.hint})")
        return self._entries[name]

    def check(self, name: str, kwargs: Mapping[str, Any], where: str, name_where: str | None = None) -> F:
        """The function under ``name``, once ``kwargs`` (the config keys at ``where``) fit it.

        ``name_where`` is where the name itself was given (``where + ".method"`` by default).
        """
        fn = self.get(name, name_where if name_where is not None else f"{where}.method")
        check_kwargs(fn, kwargs, where, skip=len(self.leading))
        return fn


def check_kwargs(fn: Callable[..., Any], kwargs: Mapping[str, Any], where: str, skip: int = 0) -> None:
    """Reject keys that ``fn`` does not take, naming them and what it does take.

    ``skip`` leading positional parameters (the model, the data) are not config keys.
    """
    parameters = list(inspect.signature(fn).parameters.values())[skip:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return
    names = {p.name for p in parameters}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise ConfigError(
            f"{where}: unknown config key '{where}.{unknown[0]}' (allowed: {', '.join(sorted(names))})"
        )
    missing = [
        p.name for p in parameters if p.default is inspect.Parameter.empty and p.name not in kwargs
    ]
    if missing:
        raise ConfigError(f"{where}: missing config key '{where}.{missing[0]}'")
