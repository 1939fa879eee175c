"""`Service`: a named set of handlers, defined in user code and served by a worker."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from protocol import NAME_PATTERN, TARGET_ATTRIBUTE

__all__ = ["TARGET_ATTRIBUTE", "Handler", "Service"]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class Handler:
    """One served function. ``is_async`` handlers run on the worker's event loop;
    ``streams`` handlers are generators (plain or async): a stream request gets their
    items one by one (SPEC 7.11), a plain request the list of them all."""

    service: str
    name: str
    fn: Callable[..., Any]
    is_async: bool
    streams: bool = False

    @property
    def target(self) -> str:
        """The wire name, ``service.handler``."""
        return f"{self.service}.{self.name}"

    def arguments_error(self, args: list[Any], kwargs: dict[str, Any]) -> str | None:
        """Why ``args``/``kwargs`` do not fit the signature, or None when they do.

        Checked only after a call raised TypeError, so the common path pays nothing
        and a TypeError from inside the handler is still reported as the handler's.
        """
        try:
            inspect.signature(self.fn).bind(*args, **kwargs)
        except TypeError as exc:
            return f"{self.target}: {exc}"
        except ValueError:  # no signature (some builtins): cannot tell
            return None
        return None


class Service:
    """A named group of handlers: ``Service("math")`` serves ``math.add``, ``math.mean``...

    Decorate functions with `handler`; start a worker with
    ``zeromesh-worker module:attribute``. The decorated functions stay ordinary
    functions: calling one locally runs it locally.
    """

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise ValueError(
                f"service name {name!r} must be 1-64 characters of letters, digits, '_' "
                "or '-', starting with a letter or '_' (no dots: 'service.handler' is "
                "how calls address a handler)"
            )
        self.name = name
        self.handlers: dict[str, Handler] = {}

    def __repr__(self) -> str:
        return f"Service({self.name!r}, handlers={sorted(self.handlers)})"

    @overload
    def handler(self, fn: F, /) -> F: ...
    @overload
    def handler(self, name: str | None = None, /) -> Callable[[F], F]: ...

    def handler(self, fn_or_name: Any = None, /) -> Any:
        """Register a function as a handler, named after it or explicitly.

        ``@svc.handler`` serves ``fn`` as ``<service>.<fn.__name__>``;
        ``@svc.handler("mean")`` serves it as ``<service>.mean``. ``async def``
        functions run on the worker's event loop (many at once); plain functions run
        in the worker's handler threads (``--concurrency`` at once). A generator
        (``yield``, plain or async) streams its items to ``Client.stream``; called
        plainly, it returns the list of them all.

        Raises:
            ValueError: the name is invalid or already taken in this service.
        """
        if callable(fn_or_name):
            return self._register(fn_or_name, fn_or_name.__name__)
        if fn_or_name is not None and not isinstance(fn_or_name, str):
            raise TypeError("use @svc.handler or @svc.handler('name')")

        def decorate(fn: F) -> F:
            return self._register(fn, fn_or_name or fn.__name__)

        return decorate

    def _register(self, fn: F, name: str) -> F:
        if not NAME_PATTERN.match(name):
            raise ValueError(
                f"handler name {name!r} must be 1-64 characters of letters, digits, '_' or '-'"
            )
        if name in self.handlers:
            raise ValueError(f"{self.name}.{name} is already registered")
        is_async = inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)
        streams = inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)
        handler = Handler(self.name, name, fn, is_async, streams)
        self.handlers[name] = handler
        # Builtins and the like take no attributes: still served, just not by reference.
        with contextlib.suppress(AttributeError, TypeError):
            setattr(fn, TARGET_ATTRIBUTE, handler.target)
        return fn
