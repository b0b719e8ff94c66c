"""A name registry for scene programs: ``register(name)(builder)`` and ``get(name, **config)``."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["register", "get", "available"]

_BUILDERS: dict[str, Callable] = {}


def register(name: str) -> Callable[[Callable], Callable]:
    """Decorator registering ``builder(**config) -> program`` under ``name``."""

    def decorate(builder: Callable) -> Callable:
        if name in _BUILDERS and _BUILDERS[name] is not builder:
            raise ValueError(f"a program named {name!r} is already registered")
        _BUILDERS[name] = builder
        return builder

    return decorate


def get(name: str, **config):
    """Build the registered program ``name`` with keyword configuration ``config``.

    >>> program = get("face", resolution=32)  # doctest: +SKIP
    """
    if not isinstance(name, str) or name not in _BUILDERS:
        raise KeyError(
            f"unknown program {name!r}; registered programs are {sorted(_BUILDERS)}. "
            "Register your own with probgraphics.programs.register(name)."
        )
    return _BUILDERS[name](**config)


def available() -> list[str]:
    """Names of the registered programs, sorted."""
    return sorted(_BUILDERS)
