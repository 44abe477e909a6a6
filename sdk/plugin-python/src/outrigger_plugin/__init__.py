"""Write Outrigger plugins in Python.

A plugin is a module defining ``plugin``, an instance of a ``Plugin``
subclass with the hooks it implements (``authorize``, ``classify``,
``on_write``, ``on_value``); ``outrigger-plugin build app.py`` makes it a WebAssembly
component of the plugin world (``sdk/wit``). The world's types
(``Request``, ``Operation``, ``Primitive``, ``WriteEvent``, ``Limit``,
``Invalidation_Key``, ``ValueEvent``, ``ValuePoint``...) are importable from here; they exist inside the
component, where the build generates them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Union

if TYPE_CHECKING:
    from wit_world.imports.types import Decision, Request, ValueDecision, ValueEvent, WriteEvent

__all__ = [
    "Plugin",
    "allow",
    "deny",
    "rewrite",
    "keep",
    "replace",
    "refuse",
    "attribute",
    "log",
    "now_ms",
]


def _types() -> Any:
    from wit_world.imports import types

    return types


def _host() -> Any:
    from wit_world.imports import host

    return host


def __getattr__(name: str) -> Any:
    # The world's types, from the bindings the build generates.
    try:
        return getattr(_types(), name)
    except (ImportError, AttributeError):
        raise AttributeError(f"module 'outrigger_plugin' has no attribute {name!r}") from None


class Plugin:
    """Base of a plugin. Define the hooks it implements:

    - ``authorize(self, request) -> Decision``
    - ``classify(self, request) -> Optional[Limit]``
    - ``on_write(self, event) -> list[Invalidation]``
    - ``on_value(self, event) -> ValueDecision`` (``keep()``, ``replace(b)``
      or ``refuse(reason)``)

    ``init`` gets the plugin's ``config`` (parsed JSON) once, before any
    hook; raising refuses it, with the exception's text as the reason.
    """

    def init(self, config: dict[str, Any]) -> None:
        pass


def allow() -> Decision:
    return _types().Decision_Allow()


def deny(reason: str) -> Decision:
    """Denies, with the reason the caller is told (HTTP 403, gRPC PERMISSION_DENIED)."""
    return _types().Decision_Deny(str(reason))


def rewrite(target: str) -> Decision:
    """Lets the request go on with ``target`` in place of its own."""
    types = _types()
    return types.Decision_Rewrite(types.Rewrite(target=str(target)))


def keep() -> ValueDecision:
    """Keeps the value as it came (nothing is copied back)."""
    return _types().ValueDecision_Keep()


def replace(value: Union[bytes, str]) -> ValueDecision:
    """Goes on with these bytes instead (a str is taken as UTF-8)."""
    if isinstance(value, str):
        value = value.encode()
    return _types().ValueDecision_Replace(bytes(value))


def refuse(reason: str) -> ValueDecision:
    """Refuses the value, with the reason the caller is told (HTTP 403)."""
    return _types().ValueDecision_Deny(str(reason))


def attribute(request: Union[Request, WriteEvent, ValueEvent], name: str) -> Optional[str]:
    """The value of the request's attribute ``name`` (``x-outrigger-attr-<name>``)."""
    for key, value in request.attributes:
        if key == name:
            return value
    return None


class _Log:
    """Lines in the sidecar's log, as this plugin's (at most 32 per call)."""

    def _line(self, level: str, message: str) -> None:
        _host().log(getattr(_types().Level, level), str(message))

    def trace(self, message: str) -> None:
        self._line("TRACE", message)

    def debug(self, message: str) -> None:
        self._line("DEBUG", message)

    def info(self, message: str) -> None:
        self._line("INFO", message)

    def warn(self, message: str) -> None:
        self._line("WARN", message)

    def error(self, message: str) -> None:
        self._line("ERROR", message)


log = _Log()


def now_ms() -> int:
    """Milliseconds since the Unix epoch, the host's clock."""
    return int(_host().now_ms())
