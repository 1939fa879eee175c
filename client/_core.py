"""The client's socket shell: one DEALER per endpoint around the pure `Dispatcher`.

Everything here runs on one loop: the caller's asyncio loop for `AsyncClient`, and for
`Client` a small loop (`_driver.SyncLoop`) that offers the same few methods and is
driven under a lock by whichever thread is reading the sockets. No method is
thread-safe. One socket per endpoint, not one DEALER connected to all: the client must
know which worker holds each request, to send the next one to the least busy worker,
to never exceed a worker's capacity, and to re-send exactly what a lost worker held.

The rules (queues, pick, retries, deadlines, liveness) live in `_dispatch.Dispatcher`.
This shell reads the sockets and decodes what arrives into its method calls, runs its
timers (the heartbeat tick, the wake-up it asks for), and carries out its commands:
sends, and the loop timer. Liveness comes from three sources: the socket monitor (a
killed worker's connection closes at once), application PING/PONG (a frozen worker, or
a stuck loop, stops answering), and the worker's own DISCONNECT on drain.

An endpoint whose host is a name (``tcp://workers.internal:5555``) stands for every
address the name resolves to: a `zmqio.NameWatch` looks it up off the loop and
again every ``resolve_interval``; each address is a peer of its own, joined when it
appears and retired (drained) when it vanishes (`_join`, `_leave`, `_reap`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq

import protocol
from protocol import (
    Bundle,
    Cancel,
    Credit,
    Disconnect,
    End,
    Error,
    Hello,
    Item,
    Limits,
    Ping,
    Progress,
    ProtocolError,
    Reply,
)
from zmqio import (
    DEFAULT_RESOLVE_INTERVAL,
    BindError,
    ClientSecurity,
    Dialer,
    NameTable,
    NameWatch,
    new_context,
    receive_batch,
)

from ._dispatch import (
    Call,
    Dispatcher,
    Peer,
    SendBye,
    SendCall,
    SendCancel,
    SendCredit,
    SendHello,
    SendPing,
    Slots,
    WakeAt,
    WorkerInfo,
)
from ._metrics import ClientMetrics

__all__ = ["Core"]

log = logging.getLogger("zeromesh.client")

_BATCH = 1024  # replies read per wake-up before other callbacks get a turn
_REAP_S = 0.1  # how often retiring peers (their address left DNS) are checked for idle


class Core:
    """Sockets and timers for a set of endpoints around one `Dispatcher`. Loop-thread only.

    ``calls`` is the Dispatcher's table of pending calls (read by the facades).
    """

    def __init__(
        self,
        endpoints: list[str],
        *,
        heartbeat: float,
        prefetch: int,
        limits: Limits,
        loop: asyncio.AbstractEventLoop | Any,
        security: ClientSecurity | None = None,
        metrics: ClientMetrics | None = None,
        resolve_interval: float = DEFAULT_RESOLVE_INTERVAL,
    ) -> None:
        self.endpoints = endpoints
        self.resolve_interval = resolve_interval
        self.metrics = metrics
        if metrics is not None:
            metrics.core = self
        self.security = security
        self.heartbeat = heartbeat
        self.limits = limits
        self.loop = loop
        self.dispatcher = Dispatcher(heartbeat=heartbeat, prefetch=prefetch, clock=time.monotonic)
        self.calls = self.dispatcher.calls
        self._out = self.dispatcher.outbox
        # Bound once: these run once per request (a measurable share of a small call).
        self._submit = self.dispatcher.submit
        self._reply = self.dispatcher.reply
        self._timer: Any = None  # the loop's timer handle (asyncio's or SyncLoop's)
        self._ticker: Any = None
        self._ctx = new_context()
        self._dialers: list[Dialer] = []
        self._closed = False
        self._hello_frames = protocol.encode(
            Hello(
                0,
                role="client",
                version=protocol.__version__,
                host=socket.gethostname(),
                pid=os.getpid(),
                bundle=True,
            )
        )
        self._ping_frames = protocol.encode(Ping(0))
        self._names: NameWatch | None = None
        self._by_address: dict[str, Peer] = {}  # peers from host names, retiring ones too
        self._reaper: Any = None

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Connect to every endpoint (workers are greeted as their handshakes complete).

        Endpoints with a host name are looked up off the loop; their addresses are
        connected to as the answers come in (`_join`).

        Raises:
            ValueError: an endpoint is malformed or cannot be connected to.
        """
        table = NameTable(self.endpoints, interval=self.resolve_interval, clock=time.monotonic)
        for endpoint in table.fixed:
            try:
                self._connect(endpoint)
            except ValueError:
                self.close()
                raise
        if table.names:
            self.dispatcher.set_unresolved(table.unresolved())
            self._names = NameWatch(
                table,
                self.loop,
                log=log,
                on_join=self._join,
                on_leave=self._leave,
                on_change=self._names_changed,
            )
            self._names.start()
        self._tick()

    def _connect(self, endpoint: str, name: str = "") -> Peer:
        """A peer for ``endpoint``, its socket dialling (``name``: the endpoint as written,
        when ``endpoint`` is an address its host name resolved to).

        Raises:
            ValueError: the endpoint is malformed or cannot be connected to.
        """
        peer = Peer(endpoint)
        dialer = Dialer(
            self._ctx,
            endpoint,
            self.loop,
            limits=self.limits,
            heartbeat_ms=int(self.heartbeat * 1000),
            on_input=functools.partial(self._on_readable, peer),
            on_connected=functools.partial(self._on_handshake, peer),
            on_disconnected=functools.partial(self._on_dropped, peer),
            on_refused=functools.partial(self._on_refused, peer),
            security=self.security,
            name=name,
        )
        try:
            dialer.open()
        except BindError as exc:
            raise ValueError(str(exc)) from exc
        peer.link = dialer
        self._dialers.append(dialer)
        self.dispatcher.add_peer(peer)
        self._greet(peer)
        return peer

    def close(self) -> None:
        """Fail what is still pending, close every socket. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for handle in (self._timer, self._ticker, self._reaper):
            if handle is not None:
                handle.cancel()
        if self._names is not None:
            self._names.close()
        self.dispatcher.close()
        self._run_outbox()
        for dialer in self._dialers:
            dialer.close()
        self._ctx.term()

    # --- what the facades ask ------------------------------------------------------------

    def submit(self, call: Call) -> None:
        """Take ``call``: send it now if a worker has room, else queue it."""
        if self.metrics is not None:
            self.metrics.watch(call)
        self._submit(call)
        if self._out:
            self._run_outbox()

    def cancel(self, rid: int) -> bool:
        """The caller gave up on ``rid``: forget it, and tell its worker to drop it.

        True if the call was still pending (so its ``complete`` will never run).
        """
        cancelled = self.dispatcher.cancel(rid)
        self._run_outbox()
        return cancelled

    def grant(self, rid: int, credit: int) -> None:
        """The consumer of stream ``rid`` read ``credit`` more items: tell its worker."""
        self.dispatcher.grant(rid, credit)
        self._run_outbox()

    def capacity(self) -> int:
        """Total capacity of the ready workers (readable from any thread)."""
        return self.dispatcher.capacity()

    def slots(self) -> Slots:
        """What the ready workers run at once, plain and async apart (any thread)."""
        return self.dispatcher.slots()

    def ask_info(self, on_done: Callable[[], None]) -> float:
        """Ask every endpoint for a fresh HELLO; ``on_done()`` once all have answered.

        Returns the time of asking, for `info_rows`. The caller waits (with its own
        timeout) in whatever way suits its loop.
        """
        since = self.dispatcher.ask_info(on_done)
        self._run_outbox()
        return since

    def info_rows(self, since: float) -> list[WorkerInfo]:
        """One row per endpoint: what it said in a HELLO later than ``since``."""
        return self.dispatcher.info_rows(since)

    # --- carrying out the dispatcher's commands -------------------------------------------

    def _run_outbox(self) -> None:
        out = self._out
        i = 0
        while i < len(out):  # commands added meanwhile are carried out too
            cmd = out[i]
            i += 1
            if type(cmd) is SendCall:
                peer, call = cmd.peer, cmd.call
                if call.peer is not peer:
                    continue  # taken back since: its peer was found gone
                if i < len(out) and type(out[i]) is SendCall and _takes_bundles(peer):
                    sent = self._send_coalesced(out, i - 1, peer)
                    if sent < 0:
                        return
                    i = sent
                elif not self._try_send(peer, call.frames_for(peer, self.limits)):
                    self._take_back(out, i - 1, peer, call)
                    return
            elif type(cmd) is WakeAt:
                self._arm_timer(cmd.when)
            elif type(cmd) is SendHello:
                self._try_send(cmd.peer, self._hello_frames)
            elif type(cmd) is SendPing:
                self._try_send(cmd.peer, self._ping_frames)
            elif type(cmd) is SendCancel:
                self._try_send(cmd.peer, protocol.encode(Cancel(cmd.rid)))
            elif type(cmd) is SendCredit:
                self._try_send(cmd.peer, protocol.encode(Credit(cmd.rid, cmd.credit)))
            elif type(cmd) is SendBye:
                self._try_send(cmd.peer, protocol.encode(Disconnect(0, "client closing")))
        out.clear()

    def _send_coalesced(self, out: list[Any], first: int, peer: Peer) -> int:
        """Send the requests to ``peer`` that stand together in the outbox from
        ``first`` on, small ones joined into BUNDLEs (SPEC 7.10): they are ready now,
        so sending them together makes none of them wait.

        Returns the index after the last command carried out, or -1 if a send failed
        (the outbox was then handed to `_take_back`).
        """
        calls: list[Call] = []
        end = first
        while end < len(out):
            cmd = out[end]
            if type(cmd) is not SendCall or cmd.peer is not peer:
                break
            if cmd.call.peer is peer:  # (else taken back since)
                calls.append(cmd.call)
            end += 1
        done = 0
        for frames, count in protocol.coalesce([c.frames_for(peer, self.limits) for c in calls]):
            if not self._try_send(peer, frames):
                failed = calls[done]
                self._take_back(out, out.index(SendCall(peer, failed), first), peer, failed)
                return -1
            done += count
        return end

    def _take_back(self, out: list[Any], at: int, peer: Peer, call: Call) -> None:
        """The send of ``out[at]`` (``call``) failed: ``peer`` is not connected after all
        (or its queue is full). The dispatcher takes back that send and the later ones
        to that peer; then the rest of the outbox is carried out."""
        del out[: at + 1]
        self.dispatcher.unsent(peer, call)
        self._run_outbox()

    def _try_send(self, peer: Peer, frames: list[Any]) -> bool:
        try:
            return peer.link.send(frames)  # (it looks for input the send may hide)
        except zmq.ZMQError as exc:
            log.warning("send to %s failed: %s", peer.endpoint, exc)
            return False

    # --- receiving -----------------------------------------------------------------------

    def _on_readable(self, peer: Peer) -> None:
        sock = peer.link.sock
        if sock.closed:
            return
        n = receive_batch(sock, functools.partial(self._on_frames, peer), _BATCH)
        if n == _BATCH:
            self.loop.call_soon(self._on_readable, peer)  # more waiting; let others run
        if n:
            self.dispatcher.heard(peer)
        if self._out:
            self._run_outbox()

    def _on_frames(self, peer: Peer, frames: Sequence[Any]) -> None:
        try:
            msg = protocol.decode(frames, self.limits)
            if type(msg) is Bundle:
                protocol.check_route(msg, link=False)
        except ProtocolError as exc:
            self.dispatcher.bad_message(peer, exc)
            return
        # `type(msg) is X` each time, not once in a local: mypy narrows only this way.
        if type(msg) is Bundle:
            for inner in msg.messages:  # each as if it had come alone (SPEC 7.10)
                self._on_frames(peer, inner)
        elif type(msg) is Reply:
            self._reply(peer, msg.id, msg.result)
        elif type(msg) is Item:
            self.dispatcher.item(peer, msg.id, msg.value if msg.batch else [msg.value])
        elif type(msg) is End:
            self.dispatcher.end(peer, msg.id, msg.items)
        elif type(msg) is Error:
            self.dispatcher.error(peer, msg)
        elif type(msg) is Hello:
            self.dispatcher.hello(peer, msg)
        elif type(msg) is Progress:
            self.dispatcher.progress(msg)
        elif type(msg) is Disconnect:
            self.dispatcher.disconnect(peer, msg.reason)
        # PONG only proves life (`heard`), as does a worker's PING (it checks that a client
        # holding a stream is still there, SPEC 7.11); READY and the rest mean nothing here.

    def _on_dropped(self, peer: Peer) -> None:
        """The connection to ``peer`` dropped; its Dialer dials a fresh socket next."""
        # Replies the worker sent before it closed are still queued here: take them
        # first, or their requests count as lost and run twice.
        self._on_readable(peer)
        self.dispatcher.dropped(peer)
        self._run_outbox()

    def _on_handshake(self, peer: Peer) -> None:
        self.dispatcher.handshake(peer)
        self._greet(peer)

    def _on_refused(self, peer: Peer, reason: str) -> None:
        """``peer``'s CURVE handshake failed; the Dialer says why."""
        if peer.refused != reason:
            log.error("%s", reason)
        self.dispatcher.refused(peer, reason)
        if self._out:
            self._run_outbox()

    def _greet(self, peer: Peer) -> None:
        """Say HELLO to a newly connected worker or broker; its answer makes it READY."""
        peer.link.greet(functools.partial(self._greeting, peer))

    def _greeting(self, peer: Peer) -> list[Any] | None:
        return self._hello_frames if self.dispatcher.wants_hello(peer) else None

    # --- timers ------------------------------------------------------------------------------

    def _arm_timer(self, when: float) -> None:
        if self._closed:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(self._loop_time(when), self._on_timer)

    def _loop_time(self, monotonic_at: float) -> float:
        return self.loop.time() + (monotonic_at - time.monotonic())

    def _on_timer(self) -> None:
        self._timer = None
        self.dispatcher.on_timer()
        self._run_outbox()

    def _tick(self) -> None:
        """Every heartbeat: the dispatcher's liveness rules."""
        if self._closed:
            return
        self.dispatcher.tick()
        self._run_outbox()
        self._ticker = self.loop.call_later(self.heartbeat, self._tick)

    # --- endpoints from DNS -------------------------------------------------------------------

    def _join(self, address: str, name: str) -> None:
        """``name``'s host now resolves to ``address`` too: connect to it (or take back
        the retiring peer still there)."""
        if self._closed:
            return
        peer = self._by_address.get(address)
        if peer is not None:
            self.dispatcher.add_peer(peer)
        else:
            self._by_address[address] = self._connect(address, name)
        self._run_outbox()

    def _leave(self, address: str) -> None:
        """``address`` left DNS: nothing new goes there; close it once it holds nothing."""
        peer = self._by_address.get(address)
        if peer is None or self._closed:
            return
        if self.dispatcher.retire_peer(peer):
            self._disconnect(peer)
        elif self._reaper is None:
            self._reaper = self.loop.call_later(_REAP_S, self._reap)
        self._run_outbox()

    def _reap(self) -> None:
        """While peers retire: close those that hold nothing any more (checked off the
        reply path, every `_REAP_S`)."""
        self._reaper = None
        if self._closed:
            return
        for peer in self.dispatcher.idle_retired():
            self._disconnect(peer)
        if self.dispatcher.retiring:
            self._reaper = self.loop.call_later(_REAP_S, self._reap)

    def _disconnect(self, peer: Peer) -> None:
        """Close a retired peer's socket; it is forgotten."""
        if self._by_address.get(peer.endpoint) is peer:
            del self._by_address[peer.endpoint]
        dialer = peer.link
        if dialer in self._dialers:
            self._dialers.remove(dialer)
        dialer.close()
        log.info("closed the connection to %s (it left DNS)", peer.endpoint)

    def _names_changed(self) -> None:
        if self._names is not None:
            self.dispatcher.set_unresolved(self._names.table.unresolved())
        self._run_outbox()


def _takes_bundles(peer: Peer) -> bool:
    """Whether ``peer`` said in its HELLO that it takes BUNDLE messages (revision 1.2)."""
    hello = peer.hello
    return hello is not None and hello.bundle
