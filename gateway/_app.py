"""The HTTP surface: tornado handlers for calls, streams, jobs and health, and their routes.

Handlers only translate: HTTP in (body, path, query, Accept), `Gateway` methods, HTTP
out. Every error leaves as ``{"error": {"type", "message", "code"}}`` (see `_errors`).

Request bodies are streamed (``stream_request_body``) so a body's size is checked
before it is all in memory: a ``Content-Length`` over ``--max-body`` is answered 413
at once when the client waits for ``100-continue`` (or the body is huge), else the body
is read and thrown away, so a client that is still sending reads the 413 rather than
a reset connection, and its keep-alive connection stays usable. A request without a
valid token (``--token-file``) gets its 401 the same way.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from typing import TYPE_CHECKING, Any

import msgpack
from tornado.iostream import StreamClosedError
from tornado.web import Application, HTTPError, RequestHandler, stream_request_body

from protocol import DEFAULT_LIMITS, TARGET_PATTERN, ProtocolError, is_traceparent, parse_json

from ._errors import ApiError
from ._render import JSON_TYPE, wants_msgpack

if TYPE_CHECKING:
    from client import AsyncStream

    from ._gateway import Gateway

__all__ = ["drain_limit", "make_app", "parse_call_body"]

access_log = logging.getLogger("zeromesh.gateway.access")

_MiB = 1024 * 1024
_JOB_ID = re.compile(r"[A-Za-z0-9_\-]{22}\Z")
_MSGPACK_BODY = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack")
_BODY_KEYS = frozenset(("args", "kwargs"))
# The request body the gateway sends nests ``args``/``kwargs`` one level down.
MAX_ARGUMENT_DEPTH = DEFAULT_LIMITS.max_depth - 1
_USAGE = 'expected a JSON object {"args": [...], "kwargs": {...}} (both optional)'
NDJSON_TYPE = "application/x-ndjson"
SSE_TYPE = "text/event-stream"
MAX_WINDOW = 1024
"""The most items ``POST /stream?window=`` may let ahead of the HTTP caller."""
DEFAULT_WINDOW = 16


def drain_limit(max_body: int) -> int:
    """Oversized bodies up to this many bytes are read and discarded before the 413."""
    return max(4 * max_body, max_body + 64 * _MiB)


def make_app(gateway: Gateway) -> Application:
    """The tornado `Application` serving ``gateway``."""
    init = {"gateway": gateway}
    return Application(
        [
            (r"/call/([^/]*)", CallHandler, init),
            (r"/stream/([^/]*)", StreamHandler, init),
            (r"/jobs/([^/]*)", JobsHandler, init),
            (r"/healthz", HealthHandler, init),
            (r"/metrics", MetricsHandler, init),
        ],
        default_handler_class=NotFoundHandler,
        default_handler_args=init,
        log_function=_log_request,
        compress_response=False,
    )


def _log_request(handler: RequestHandler) -> None:
    status = handler.get_status()
    gateway = getattr(handler, "gateway", None)
    if gateway is not None:  # every answered request, whatever its route
        route = _ROUTES.get(type(handler), "other")
        gateway.http.observe(route, str(status), handler.request.request_time())
    level = logging.DEBUG if status < 400 else logging.INFO if status < 500 else logging.WARNING
    if access_log.isEnabledFor(level):
        request = handler.request
        access_log.log(
            level,
            "%d %s %s (%s) %.1f ms",
            status,
            request.method,
            request.uri,
            request.remote_ip,
            1000 * request.request_time(),
        )


def parse_call_body(body: bytes, content_type: str) -> tuple[list[Any], dict[str, Any]]:
    """``(args, kwargs)`` from a call or job body (JSON, or msgpack by content type).

    An empty body means no arguments. JSON numbers the wire does not carry (``NaN``,
    ``Infinity``, ``1e999``, integers outside ``protocol.MIN_INT..MAX_INT``) are refused
    here rather than sent on as infinities or refused by the encoder later.

    Raises:
        ApiError: 400 for a body that is not valid or not shaped as documented.
    """
    if not body.strip():
        return [], {}
    media = content_type.split(";", 1)[0].strip().lower()
    try:
        data = msgpack.unpackb(body, raw=False) if media in _MSGPACK_BODY else parse_json(body)
    except ProtocolError as exc:  # the message names the number
        raise ApiError(
            400, "BadRequest", f"the body has a number zeromesh cannot carry: {exc}"
        ) from None
    except (ValueError, RecursionError, msgpack.ExtraData, msgpack.FormatError) as exc:
        kind = "msgpack" if media in _MSGPACK_BODY else "JSON"
        raise ApiError(400, "BadRequest", f"the body is not valid {kind}: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "BadRequest", f"{_USAGE}, not a {type(data).__name__}")
    unknown = set(data) - _BODY_KEYS
    if unknown:
        raise ApiError(400, "BadRequest", f"unknown key(s) {sorted(map(str, unknown))}: {_USAGE}")
    args = data.get("args", [])
    kwargs = data.get("kwargs", {})
    if not isinstance(args, list):
        raise ApiError(400, "BadRequest", f'"args" must be a list, not {type(args).__name__}')
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise ApiError(400, "BadRequest", '"kwargs" must be an object with string keys')
    # Brackets bound the nesting from above: most bodies need no walk at all.
    if body.count(b"[") + body.count(b"{") > MAX_ARGUMENT_DEPTH or media in _MSGPACK_BODY:
        for value in (args, kwargs):
            if _depth(value) > MAX_ARGUMENT_DEPTH:
                raise ApiError(
                    400,
                    "BadRequest",
                    f"arguments nest deeper than {MAX_ARGUMENT_DEPTH} levels of lists/objects",
                )
    return args, kwargs


def _depth(value: Any) -> int:
    """Levels of list/dict nesting in ``value`` (0 for a scalar), without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if depth > MAX_ARGUMENT_DEPTH:
            return depth
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def check_target(target: str) -> None:
    """Raise 404 for a path that cannot name a handler (``service.handler``)."""
    if not TARGET_PATTERN.match(target):
        raise ApiError(
            404,
            "UnknownHandler",
            f"{target!r} is not a handler name: expected service.handler, e.g. demo.fib",
        )


@stream_request_body
class _Handler(RequestHandler):
    """Base: streamed body with a size limit, JSON errors, results in the asked format."""

    gateway: Gateway

    _caller: str | None = None
    _unauthorized = False

    def initialize(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._chunks: list[bytes] = []
        self._size = 0
        self._too_large = False

    def set_default_headers(self) -> None:
        self.set_header("Server", "zeromesh-gateway")

    @property
    def caller(self) -> str | None:
        """The name of the token the request carried (None without ``--token-file``).

        Raises 401 for a request without a valid token, so a handler method that asks
        who calls can never act for nobody.
        """
        self.check_token()
        return self._caller

    def authenticate(self) -> bool:
        """Read the ``Authorization`` header; True when no token file is configured or
        the header carries a valid token."""
        tokens = self.gateway.tokens
        if tokens is None:
            return True
        self._caller = tokens.name_of(self.request.headers.get("Authorization"))
        return self._caller is not None

    def check_token(self) -> None:
        """Raise 401 for a request without a valid token (every handler method that
        acts starts here, or reads `caller`)."""
        if self._unauthorized:
            raise self._no_token()

    def _no_token(self) -> ApiError:
        given = "Authorization" in self.request.headers
        return ApiError(
            401,
            "Unauthorized",
            "the token is not valid (unknown, or removed from --token-file)"
            if given
            else "this gateway needs a token: send Authorization: Bearer <token>",
        )

    def prepare(self) -> None:
        # Without a valid token, a body on its way is read and dropped before the 401,
        # as for a 413, so the client reads the answer and its connection stays usable.
        self._unauthorized = not self.authenticate()
        self.check_length()
        headers = self.request.headers
        if self._unauthorized and not (
            "Content-Length" in headers or "Transfer-Encoding" in headers
        ):
            raise self._no_token()

    def check_length(self) -> None:
        """Refuse a declared ``Content-Length`` over ``--max-body`` (see the module doc)."""
        limit = self.gateway.config.max_body
        header = self.request.headers.get("Content-Length")
        length = int(header) if header is not None and header.isdigit() else 0
        if length <= limit:
            return
        self._too_large = True
        self._size = length
        waiting = self.request.headers.get("Expect", "").lower() == "100-continue"
        if waiting or length > drain_limit(limit):
            # Answer now: a waiting client sends nothing more; a huge body is not worth
            # reading. Raise the connection's own limit first, or tornado would append
            # its bare "400 Bad Request" to our 413; the connection closes after it.
            self.request.connection.set_max_body_size(length)  # type: ignore[union-attr]
            raise self._no_token() if self._unauthorized else self._body_too_large(length)

    def data_received(self, chunk: bytes) -> None:
        if self._too_large or self._unauthorized:
            return  # read and dropped: the 401 or 413 comes once the body is in
        self._size += len(chunk)
        if self._size > self.gateway.config.max_body:
            self._too_large = True
            self._chunks.clear()
            return
        self._chunks.append(chunk)

    def body(self) -> bytes:
        """The request body. Raises 401 without a valid token, 413 when it was over
        ``--max-body``."""
        self.check_token()
        if self._too_large:
            raise self._body_too_large(self._size)
        return b"".join(self._chunks)

    def _body_too_large(self, size: int) -> ApiError:
        limit = self.gateway.config.max_body
        what = f"{size} bytes" if size > limit else "more"
        return ApiError(
            413,
            "PayloadTooLarge",
            f"the request body is {what}, over the gateway's limit of {limit} bytes "
            "(--max-body); send large data by reference",
        )

    def traceparent(self) -> str:
        """The caller's W3C ``traceparent`` header, passed on to the worker ("" if none)."""
        return _traceparent_of(self.request.headers)

    def call_arguments(self) -> tuple[list[Any], dict[str, Any]]:
        return parse_call_body(self.body(), self.request.headers.get("Content-Type", ""))

    def timeout_argument(self, name: str = "timeout", default: float | None = None) -> float:
        """``?timeout=SECONDS`` (or ``name``): lowers ``default`` (the gateway's
        ``--call-timeout``), never raises it."""
        if default is None:
            default = self.gateway.config.call_timeout
        text = self.get_query_argument(name, None)
        if text is None:
            return default
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (value > 0 and math.isfinite(value)):
            raise ApiError(400, "BadRequest", f"{name}={text!r}: expected seconds > 0")
        return min(value, default)

    async def send_value(self, value: Any) -> None:
        """Finish with ``value`` as JSON, or msgpack when the client's Accept asks."""
        body, content_type = await self.gateway.render(
            value, wants_msgpack(self.request.headers.get("Accept"))
        )
        self.set_header("Content-Type", content_type)
        self.finish(body)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiError):
            error = exc
        elif isinstance(exc, HTTPError) or exc is None:
            reason = self._reason.replace(" ", "")
            message = (exc.log_message if isinstance(exc, HTTPError) else None) or self._reason
            error = ApiError(status_code, reason or "HTTPError", message)
        else:
            error = ApiError(500, "GatewayError", "internal error in the gateway; see its log")
        self.set_status(error.status)
        if error.status == 401:
            bad = "Authorization" in self.request.headers
            self.set_header("WWW-Authenticate", 'Bearer error="invalid_token"' if bad else "Bearer")
        if error.retry_after is not None:
            self.set_header("Retry-After", str(error.retry_after))
        self.set_header("Content-Type", JSON_TYPE)
        self.finish(_dumps({"error": error.to_dict(self.gateway.config.debug)}))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, ApiError):
            return  # an answer, not a fault: the access log has it
        super().log_exception(typ, value, tb)


def _traceparent_of(headers: Any) -> str:
    """The request's W3C ``traceparent`` header, or "" (absent, or malformed: ignored,
    as W3C Trace Context says, not refused)."""
    value = headers.get("traceparent", "").strip().lower()
    return value if is_traceparent(value) else ""


class CallHandler(_Handler):
    """``POST /call/<service.handler>``: run it now, answer ``{"result": ...}``."""

    _reply: asyncio.Future[Any] | None = None
    _hung_up = False

    async def post(self, target: str) -> None:
        self.check_token()
        check_target(target)
        args, kwargs = self.call_arguments()
        timeout = self.timeout_argument()
        try:
            value = await self.gateway.call(
                target, args, kwargs, timeout, self._sent, self.traceparent()
            )
        except asyncio.CancelledError:
            if self._hung_up:
                return  # the caller left; the worker was told to drop the request
            raise
        await self.send_value({"result": value})

    def _sent(self, reply: asyncio.Future[Any]) -> None:
        self._reply = reply
        if self._hung_up:
            reply.cancel()

    def on_connection_close(self) -> None:
        self._hung_up = True
        if self._reply is not None:
            self._reply.cancel()


class StreamHandler(_Handler):
    """``POST /stream/<service.handler>``: a generator handler's items as it yields
    them, as Server-Sent Events (``data: <item JSON>``, then ``event: end`` or ``event:
    error``) or, with ``Accept: application/x-ndjson``, one JSON object per line
    (``{"item": ...}``, then ``{"end": ...}`` or ``{"error": ...}``).

    An error before the first item is an ordinary HTTP error answer (404, 422, 503...);
    after it, the status (200) is sent already, so the error is the stream's last
    event. Each item is written and flushed before the next is read, so a caller that
    reads slowly holds the handler paused on its worker (the mesh's credit, SPEC 7.11);
    one that disconnects cancels it there.
    """

    _stream: AsyncStream | None = None
    _hung_up = False

    async def post(self, target: str) -> None:
        self.check_token()
        check_target(target)
        args, kwargs = self.call_arguments()
        config = self.gateway.config
        ndjson = _wants_ndjson(self.request.headers.get("Accept"))
        items = self.gateway.stream(
            target,
            args,
            kwargs,
            timeout=self.timeout_argument("timeout", config.stream_timeout),
            item_timeout=self.timeout_argument("item_timeout", config.call_timeout),
            window=self._window_argument(),
            on_open=self._opened,
            trace=self.traceparent(),
        )
        sent = 0
        try:
            async for value in items:
                if self._hung_up:
                    break
                if not sent:
                    self._start(ndjson)
                body, _ = await self.gateway.render(value, False)
                self.write(b'{"item":%s}\n' % body if ndjson else b"data: %s\n\n" % body)
                sent += 1
                await self.flush()  # the next item is read (and granted) once this left
        except ApiError as error:
            if not sent:
                raise  # nothing sent yet: an ordinary error answer
            self._last(ndjson, "error", error.to_dict(config.debug))
            return
        except StreamClosedError:
            return  # the caller left mid-write; leaving the loop cancelled the stream
        finally:
            await items.aclose()  # (cancels the stream on its worker if it is still on)
        if self._hung_up:
            return
        if not sent:
            self._start(ndjson)
        self._last(ndjson, "end", {"items": sent})

    def _opened(self, stream: AsyncStream) -> None:
        self._stream = stream
        if self._hung_up:
            stream.close()

    def on_connection_close(self) -> None:
        # The caller left: cancel the stream on its worker, which ends the iteration in
        # `post` however long the handler would still take to its next item.
        self._hung_up = True
        if self._stream is not None:
            self._stream.close()

    def _start(self, ndjson: bool) -> None:
        self.set_header("Content-Type", NDJSON_TYPE if ndjson else SSE_TYPE)
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Accel-Buffering", "no")  # a proxy must pass items on as they come

    def _last(self, ndjson: bool, kind: str, data: dict[str, Any]) -> None:
        """The stream's final event (``end`` or ``error``), and the end of the answer."""
        text = _dumps(data)
        self.finish(
            b'{"%s":%s}\n' % (kind.encode(), text)
            if ndjson
            else b"event: %s\ndata: %s\n\n" % (kind.encode(), text)
        )

    def _window_argument(self) -> int:
        """``?window=N``: items let ahead of the caller (1 to `MAX_WINDOW`)."""
        text = self.get_query_argument("window", None)
        if text is None:
            return DEFAULT_WINDOW
        if not text.isdigit() or not 1 <= int(text) <= MAX_WINDOW:
            raise ApiError(
                400, "BadRequest", f"window={text!r}: expected an integer from 1 to {MAX_WINDOW}"
            )
        return int(text)


def _wants_ndjson(accept: str | None) -> bool:
    """True when ``Accept`` asks for NDJSON before Server-Sent Events."""
    for part in (accept or "").split(","):
        media = part.split(";", 1)[0].strip().lower()
        if media == NDJSON_TYPE:
            return True
        if media in (SSE_TYPE, "*/*"):
            return False
    return False


class JobsHandler(_Handler):
    """``POST /jobs/<service.handler>`` submits; ``GET``/``DELETE /jobs/<id>`` read/cancel."""

    async def post(self, target: str) -> None:
        caller = self.caller
        check_target(target)
        args, kwargs = self.call_arguments()
        record = await self.gateway.submit_job(target, args, kwargs, caller, self.traceparent())
        url = f"/jobs/{record.id}"
        self.set_status(202)
        self.set_header("Location", url)
        self.set_header("Content-Type", JSON_TYPE)
        self.finish(_dumps({"id": record.id, "status": record.status, "url": url}))

    async def get(self, job_id: str) -> None:
        await self.send_value(await self.gateway.job(_checked_id(job_id), self.caller))

    async def delete(self, job_id: str) -> None:
        await self.send_value(await self.gateway.cancel_job(_checked_id(job_id), self.caller))


def _checked_id(job_id: str) -> str:
    if not _JOB_ID.match(job_id):
        raise ApiError(404, "UnknownJob", f"no job {job_id!r}")
    return job_id


class HealthHandler(_Handler):
    """``GET /healthz``: 200 when some worker is ready, else 503; details in the body.

    With ``--token-file`` and no valid token, the body is only ``{"status": ...}``: a
    load balancer's probe needs no token, and learns no versions, hosts or pids.
    """

    def prepare(self) -> None:
        self.authenticate()  # no 401: a probe without a token gets the bare status
        self.check_length()

    async def get(self) -> None:
        ok, body = await self.gateway.health()
        if self.gateway.tokens is not None and self._caller is None:
            body = {"status": body["status"]}
        self.set_status(200 if ok else 503)
        self.set_header("Content-Type", JSON_TYPE)
        self.set_header("Cache-Control", "no-store")
        self.finish(_dumps(body))


class MetricsHandler(_Handler):
    """``GET /metrics``: Prometheus's text format (a token is needed when tokens are
    on, as for every route but /healthz; Prometheus sends it with ``authorization``)."""

    async def get(self) -> None:
        self.check_token()
        body, content_type = await self.gateway.metrics_text()
        self.set_header("Content-Type", content_type)
        self.set_header("Cache-Control", "no-store")
        self.finish(body)


class NotFoundHandler(_Handler):
    """Any other path: a JSON 404 that says what exists."""

    def prepare(self) -> None:
        if not self.authenticate():
            raise self._no_token()  # which routes exist is for token holders only
        raise ApiError(
            404,
            "NotFound",
            f"no route {self.request.path}: use POST /call/<service.handler>, "
            "POST /stream/<service.handler>, POST /jobs/<service.handler>, GET or DELETE "
            "/jobs/<id>, GET /healthz",
        )


_ROUTES: dict[type, str] = {
    CallHandler: "call",
    StreamHandler: "stream",
    JobsHandler: "jobs",
    HealthHandler: "healthz",
    MetricsHandler: "metrics",
}
"""The route label of each handler (anything else counts as ``other``)."""
