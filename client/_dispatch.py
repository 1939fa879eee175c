"""The client's dispatch rules: queues, pick, retries, deadlines, liveness. No IO.

A plain state machine driven by method calls, with a clock it is given (the broker's
`Scheduler` is the model). It never touches a socket, a loop or the system clock. The
shell (`client._core`) decodes frames into method calls and carries out the commands
the Dispatcher leaves in `Dispatcher.outbox`, in order:

* `SendCall` — send ``call.frames`` to ``peer``. If the send fails, tell the
  Dispatcher at once with `Dispatcher.unsent` (after dropping the commands already
  carried out from the outbox: it takes back the later sends to that peer too).
* `SendHello` — a HELLO: the answer says who the peer is and makes it READY.
* `SendPing` — a PING to a quiet peer; any answer proves it alive.
* `SendCancel` — the caller gave up on ``rid``, which ``peer`` holds.
* `SendCredit` — the consumer of stream ``rid`` read ``credit`` more items (SPEC 7.11).
* `SendBye` — a DISCONNECT: the client is closing.
* `WakeAt` — call `Dispatcher.on_timer` once the clock reads ``when`` (replaces the
  wake-up asked for before: a new one is only ever earlier).

Completions are not commands. Each call's own ``complete(call, value, exc)`` (the
facade's: it resolves the caller's future) is called at once, exactly once per call
unless `Dispatcher.cancel` returned True for it. That is the hot path: a reply costs
a dict pop and that call, and allocates nothing here. ``complete`` must not call back
into the Dispatcher (the facades only record the outcome).

Rules:

* Calls queue per service, first in first out; calls to handlers a peer named async
  (HELLO ``async_handlers``) queue apart from the service's plain calls, so neither
  kind waits behind the other. The head goes to the READY peer that serves its target
  and holds the fewest outstanding requests of its kind, if that is fewer than the
  peer runs at once + ``prefetch``: plain ones against its ``threads``, async ones
  against its ``async_slots``. A 1.0 peer (it announced no ``threads``) has one bound
  for both: all its outstanding requests against its ``capacity``. Among equals,
  round-robin: the one that has held that many the longest. A broker serves every
  target (it routes by itself). A worker that answered OVERLOADED gets nothing new for
  `OVERLOAD_REST_S`.
* Once every peer has said HELLO and none serves a call's target, the call fails
  `UnknownHandler` at once.
* Each call has a deadline (its timeout from submit). When it passes: `Timeout` if a
  peer holds the call (it is told to drop it) or READY peers serve it but are all
  busy; `NoWorkers` if none is READY to serve it.
* A peer lost (connection closed, send failed, silent for `LIVENESS` heartbeats)
  gives back what it held: each call is queued again at the head of its queue while
  it has attempts left (``retries + 1``), else fails `WorkerLost`. A worker's
  OVERLOADED re-queues the same way (failing `Overloaded`) and rests the worker; its
  WORKER_LOST re-queues too. A broker's OVERLOADED and WORKER_LOST are final (it
  already tried its workers; re-sending would multiply a poison request's runs).
  DRAINING means "not started": the call is queued again without using an attempt,
  and the peer gets nothing new until it says HELLO with capacity again.
* Refusals (DRAINING, OVERLOADED, WORKER_LOST) from a peer that no longer holds the
  call are stale and ignored; any other answer completes the call, whoever sends it.
* A stream call (``call.on_item`` set) goes only to a peer whose HELLO said
  ``streams``; once every peer has said HELLO and none that serves it streams, it
  fails `UnknownHandler` saying so. Its ITEMs go to ``on_item``; its END completes it
  with the item count. A peer lost after it delivered items fails it `WorkerLost`
  (with ``items``) at once: items were consumed, so it is never re-sent.
* Every heartbeat (`tick`): HELLO to connecting and draining peers (a fresh worker on
  a draining worker's endpoint answers READY), PING to peers quiet for most of an
  interval, and a peer silent for `LIVENESS` intervals is lost.
* Peers come and go with DNS (`add_peer`, `retire_peer`): a retired peer (its address
  left the name it came from) leaves `peers` at once, so nothing new goes to it; what
  it holds is answered there, or re-sent by the lost-peer rules if its connection
  dies. It waits in `retiring` until `idle_retired` hands it back to the shell to
  close. While a name has no address yet (`set_unresolved`), calls never fail
  `UnknownHandler` (its workers may serve them) and `NoWorkers` says why.

What it costs: nothing per request grows with the number of peers (issue 18: a
client over 100 endpoints had spent half its time scanning them for each pick).
Peers that said the same in their HELLO (role, handlers, async handlers, protocol)
share a `_Profile`; the READY peers of the profiles that serve a target sit in one
`_Pool`, in buckets by how many requests of that target's kind each holds, so a pick
reads the first peer of the lowest bucket and a request sent or answered moves its
peer one bucket. Rests end from a heap, not a scan of the peers. The READY and
DRAINING peers stand in order of when they were last heard (what proves a peer alive
moves it to the end), so a heartbeat (`tick`) looks at the quiet ones at the front,
due a PING or lost, and stops at the first heard lately; it greets the CONNECTING
and DRAINING ones from a set of their own. What changes the index (a HELLO, a state
change, a rest) goes through `Dispatcher._set_state`, `_leave` and `_join`.

Not thread-safe: one loop drives it (`capacity` may be read from any thread).
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any, NamedTuple

from protocol import (
    CONNECTING,
    DEFAULT_LIMITS,
    DRAINING,
    FLAG_META,
    LIVENESS,
    READY,
    AuthenticationError,
    Error,
    ErrorCode,
    Hello,
    Limits,
    NoWorkers,
    Overloaded,
    Progress,
    ProtocolError,
    Timeout,
    UnknownHandler,
    WorkerLost,
    ZeromeshError,
    takes_meta,
    without_meta,
)

__all__ = [
    "OVERLOAD_REST_S",
    "Call",
    "Command",
    "Dispatcher",
    "Peer",
    "SendBye",
    "SendCall",
    "SendCancel",
    "SendCredit",
    "SendHello",
    "SendPing",
    "Slots",
    "WakeAt",
    "WorkerInfo",
    "next_id",
]

log = logging.getLogger("zeromesh.client")

OVERLOAD_REST_S = 0.05
"""How long a worker that answered OVERLOADED gets nothing new."""

_ASYNC_QUEUE = " async"
"""Appended to a service's name, the key of its async calls' queue (no service name
holds a space)."""


class Slots(NamedTuple):
    """What the ready peers run at once, all together (`Dispatcher.slots`)."""

    threads: int
    """Plain requests (a 1.0 peer's whole capacity counts here)."""
    async_slots: int
    """Requests to async handlers."""
    async_targets: frozenset[str]
    """The ``service.handler`` names some ready peer runs in its async slots."""

    def for_target(self, target: str) -> int:
        """Requests to ``target`` the ready peers run at once: the slots of its kind."""
        return self.async_slots if target in self.async_targets else self.threads


_CONNECTING, _READY, _DRAINING = CONNECTING, READY, DRAINING
_PLAIN, _ASYNC, _ALL, _OUT = 0, 1, 2, 3
"""What bounds a request at a peer: its plain requests against ``threads``, its async
ones against ``async_slots``, or (a 1.0 peer) all of them against ``capacity``. (`_OUT`:
none, the peer leaves a pool.)"""
_MAX_TARGETS = 4096
"""Targets whose pool is remembered; past it the table starts over (a client calling
many made-up names through a broker must not grow it without bound)."""
_ids = itertools.count(1)  # process-wide: ids never repeat across clients or retries


def next_id() -> int:
    """A fresh request id (thread-safe: ``next`` on a count is atomic under the GIL)."""
    return next(_ids)


class Call:
    """One request the client owes an answer for, from submit until it completes.

    ``complete(call, value, exc)`` is the facade's: it resolves the caller's future.
    ``frames`` are opaque here (the encoded request); ``future`` is the facade's.
    """

    __slots__ = (
        "attempts",
        "complete",
        "deadline",
        "frames",
        "future",
        "id",
        "items",
        "metered_at",
        "metered_then",
        "on_item",
        "on_progress",
        "peer",
        "plain_frames",
        "queue",
        "target",
        "timeout",
    )
    metered_at: float
    metered_then: Callable[[Call, Any, BaseException | None], None]
    # Set only with metrics on (`ClientMetrics.watch`): when it was submitted, and the
    # completion to pass on once it is counted.

    def __init__(
        self,
        target: str,
        frames: list[Any],
        rid: int,
        timeout: float,
        retries: int,
        future: Any,
        complete: Callable[[Call, Any, BaseException | None], None],
    ) -> None:
        self.id = rid
        self.target = target
        self.queue = target.partition(".")[0]
        """Its service: the queue it waits in (`Dispatcher.submit` gives async calls
        their own)."""
        self.frames = frames
        self.timeout = timeout
        self.deadline = 0.0
        self.attempts = retries + 1
        self.future = future
        self.complete = complete
        self.peer: Peer | None = None  # who holds it; None while queued
        self.on_progress: Callable[[Progress], None] | None = None
        self.on_item: Callable[[list[Any]], None] | None = None
        """A stream call's: takes each ITEM's value (SPEC 7.11); None for a plain call."""
        self.items = 0
        """Items of a stream call delivered to ``on_item``."""
        self.plain_frames: list[Any] | None = None
        """``frames`` without their trace (1.1 meta), made on first need: for a peer
        that speaks 1.0."""

    def frames_for(self, peer: Peer, limits: Limits = DEFAULT_LIMITS) -> list[Any]:
        """What to send ``peer``: a 1.0 peer refuses the meta flag (SPEC section 2).
        ``limits``: the client's, which the frames were made under."""
        frames = self.frames
        hello = peer.hello
        if hello is None or takes_meta(hello.protocol) or not frames[0][5] & FLAG_META:
            return frames
        if self.plain_frames is None:
            self.plain_frames = without_meta(frames, limits)
        return self.plain_frames

    def __repr__(self) -> str:
        return f"<Call {self.target} id={self.id} attempts={self.attempts}>"


class WorkerInfo(dict[str, Any]):
    """What one endpoint said about itself (a dict, printed by ``zeromesh ping``)."""


class Peer:
    """What the client knows about one endpoint (a worker or a broker).

    ``link`` is the shell's (its socket); the Dispatcher never looks at it.
    """

    __slots__ = (
        "async_out",
        "async_slots",
        "async_targets",
        "capacity",
        "endpoint",
        "hello",
        "hello_at",
        "last_seen",
        "link",
        "outstanding",
        "pinged_at",
        "pools",
        "profile",
        "refused",
        "resting_until",
        "role",
        "seq",
        "state",
        "targets",
        "threads",
    )

    def __init__(self, endpoint: str, link: Any = None) -> None:
        self.endpoint = endpoint
        self.link = link
        self.state = _CONNECTING
        self.capacity = 0
        self.threads = 0  # plain requests it runs at once; 0: a 1.0 peer, use capacity
        self.async_slots = 0
        self.targets: frozenset[str] = frozenset()
        self.async_targets: frozenset[str] = frozenset()  # its async handlers
        self.role = ""
        self.outstanding: set[int] = set()  # ids sent to it and not answered
        self.async_out: set[int] = set()  # those of them that take an async slot
        self.last_seen = 0.0
        self.pinged_at = 0.0
        self.hello_at = 0.0  # when we last got a HELLO from it
        self.hello: Hello | None = None
        self.resting_until = 0.0  # it answered OVERLOADED: nothing new for it until then
        self.refused = ""  # why its last handshake failed (CURVE), until one succeeds
        # The Dispatcher's index (module docstring, "What it costs"):
        self.seq = 0  # its place in Dispatcher.peers (a new pool takes peers in that order)
        self.profile: _Profile | None = None  # what its last HELLO said it serves
        self.pools: list[tuple[_Pool, int]] | None = None  # while READY: its profile's

    def serves(self, target: str) -> bool:
        return self.role == "broker" or target in self.targets

    def __repr__(self) -> str:
        return f"<Peer {self.endpoint} {self.state} outstanding={len(self.outstanding)}>"


class _Profile:
    """What some peers said in their HELLO, all alike: what they serve, of which kind.

    Peers alike share their pools: a mesh of identical workers has one profile, and a
    target one pool, whatever the number of workers.
    """

    __slots__ = (
        "async_targets",
        "broker",
        "key",
        "members",
        "one_oh",
        "peers",
        "streams",
        "targets",
    )

    def __init__(self, key: tuple[bool, frozenset[str], frozenset[str], bool, bool]) -> None:
        self.key = key
        self.broker, self.targets, self.async_targets, self.one_oh, self.streams = key
        self.peers: dict[Peer, None] = {}  # those whose last HELLO says this, any state
        self.members: list[tuple[_Pool, int]] = []
        """The pools its READY peers sit in, each with the kind that bounds them there
        (a READY peer's ``pools`` is this very list: a pool made later joins it)."""

    def kind(self, target: str) -> int | None:
        """The bound ``target`` takes at these peers; None if they do not serve it."""
        if not self.broker and target not in self.targets:
            return None
        if self.one_oh:
            return _ALL
        return _ASYNC if target in self.async_targets else _PLAIN


class _Pool:
    """The READY peers of some profiles, by how many requests of one kind each holds.

    Only peers with room (fewer than their bound + prefetch, not resting) are in a
    bucket; `ready` counts them all, with room or not. Within a bucket, peers stand in
    the order they came to it, so the first is the one that has held that many the
    longest: round-robin among equals.
    """

    __slots__ = ("at", "buckets", "low", "prefetch", "ready")

    def __init__(self, prefetch: int) -> None:
        self.prefetch = prefetch
        self.buckets: dict[int, OrderedDict[Peer, None]] = {}  # by load
        self.at: dict[Peer, int] = {}  # the bucket of each peer with room
        self.low = -1  # the lowest bucket (-1: no peer has room)
        self.ready = 0

    def update(self, peer: Peer, kind: int) -> None:
        """Put ``peer`` where it belongs: in the bucket of how many requests of ``kind``
        it holds (at its end) if that is under its bound + prefetch and it does not
        rest, else in none (and in none for `_OUT`).

        O(1) when it moves by one, as a request sent or answered moves it; taking the
        last peer out of the lowest bucket otherwise looks for the next one up (at
        most the bound + prefetch away).
        """
        if kind == _PLAIN:
            load = len(peer.outstanding) - len(peer.async_out)
            bound = peer.threads
        elif kind == _ASYNC:
            load = len(peer.async_out)
            bound = peer.async_slots
        elif kind == _ALL:
            load = len(peer.outstanding)
            bound = peer.capacity
        else:
            load = bound = -1
        if load >= bound + self.prefetch or peer.resting_until:
            load = -1
        at = self.at
        old = at.get(peer, -1)
        if old == load:
            return
        buckets = self.buckets
        if old >= 0:
            del buckets[old][peer]  # (an empty bucket stays, for the next to come)
            if load < 0:
                del at[peer]
        if load >= 0:
            at[peer] = load
            into = buckets.get(load)
            if into is None:
                into = buckets[load] = OrderedDict()
            into[peer] = None
        low = self.low
        if load >= 0 and (low < 0 or load < low):
            self.low = load
        elif old == low and not buckets[old]:
            # The lowest bucket went: the next is above it (where this peer went, if it
            # moved up by one, as a request sent moves it).
            if not at:
                self.low = -1
            elif load == old + 1:
                self.low = load
            else:
                low += 1
                while not buckets.get(low):
                    low += 1
                self.low = low


class SendCall(NamedTuple):
    """Send ``call.frames`` to ``peer`` (skip it if ``call.peer`` is no longer ``peer``)."""

    peer: Peer
    call: Call


class SendHello(NamedTuple):
    """Send a HELLO to ``peer``."""

    peer: Peer


class SendPing(NamedTuple):
    """Send a PING to ``peer``."""

    peer: Peer


class SendCancel(NamedTuple):
    """Tell ``peer`` that the request ``rid`` it holds is no longer wanted."""

    peer: Peer
    rid: int


class SendCredit(NamedTuple):
    """Tell ``peer`` it may send ``credit`` more items of stream ``rid``."""

    peer: Peer
    rid: int
    credit: int


class SendBye(NamedTuple):
    """Send a DISCONNECT to ``peer``: the client is closing."""

    peer: Peer


class WakeAt(NamedTuple):
    """Call `Dispatcher.on_timer` when the clock reads ``when``."""

    when: float


Command = SendCall | SendHello | SendPing | SendCancel | SendCredit | SendBye | WakeAt


class Dispatcher:
    """Per-service queues, peers, picks, retries, deadlines and liveness of one client.

    Args:
        heartbeat: seconds between `tick` calls; a peer silent for `LIVENESS` of them
            is lost.
        prefetch: requests a peer may hold beyond its capacity.
        clock: monotonic seconds; tests pass a fake one.

    Every method appends its commands to `outbox`; the caller carries them out in
    order and clears it. `calls` (pending calls by id) is never rebound: the shell
    may keep a reference to it.
    """

    def __init__(self, *, heartbeat: float, prefetch: int, clock: Callable[[], float]) -> None:
        self.heartbeat = heartbeat
        self.prefetch = prefetch
        self.clock = clock
        self.outbox: list[Command] = []
        self.peers: list[Peer] = []
        self.calls: dict[int, Call] = {}
        self.closed = False
        self._queues: dict[str, deque[Call]] = {}
        self._async_targets: frozenset[str] = frozenset()  # what any peer named async
        self._deadlines: list[tuple[float, int]] = []
        self._wake_at = 0.0  # the wake-up asked for and not yet come (0: none)
        self._all_busy = False  # the last _pick found servers, all at their limit
        self._info_waiters: list[tuple[float, Callable[[], None]]] = []
        self.retried = {"overloaded": 0, "worker_lost": 0}
        """Calls sent again, by why: a full worker (OVERLOADED) or a lost one."""
        # The index (module docstring, "What it costs").
        self._profiles: dict[tuple[bool, frozenset[str], frozenset[str], bool, bool], _Profile] = {}
        self._pools: dict[str, _Pool] = {}  # by target
        self._stream_pools: dict[str, _Pool] = {}  # by target, of peers that stream
        self._pools_by_kinds: dict[tuple[tuple[_Profile, int], ...], _Pool] = {}
        self._unnamed = 0  # peers that have not said HELLO yet
        self._capacity = 0  # of the READY peers, kept as they change: read by any thread
        self._rests: list[tuple[float, int, Peer]] = []  # (until, entry, peer)
        self._heard: OrderedDict[Peer, None] = OrderedDict()  # not CONNECTING; least
        # lately heard first (module docstring, "What it costs")
        self._greet: dict[Peer, None] = {}  # CONNECTING and DRAINING: a HELLO each tick
        self._entries = itertools.count(1)
        self._seqs = itertools.count(1)  # `Peer.seq`: the order peers were added in

        self.retiring: list[Peer] = []
        """Peers whose address left DNS, still holding calls (`retire_peer`)."""
        self.unresolved: dict[str, str] = {}
        """Endpoints whose host name stands for no address yet: why ("" while its first
        lookup runs). Set by the shell (`set_unresolved`)."""

    def add_peer(self, peer: Peer) -> Peer:
        """Take ``peer`` (CONNECTING) among those calls may go to. A retiring peer (its
        address came back in DNS before its connection was closed) is taken back as it
        is: READY, it gets work at once."""
        if peer.seq:
            return peer  # among ours already
        self.peers.append(peer)
        peer.seq = next(self._seqs)
        if peer.hello is None:
            self._unnamed += 1
        if peer in self.retiring:
            self.retiring.remove(peer)
            log.info("%s is back in DNS: sending it work again", peer.endpoint)
            if peer.state is _READY:
                self._join(peer)
                self._dispatch_all()
                return peer
        if peer.state is not _READY:
            self._greet[peer] = None
        return peer

    def retire_peer(self, peer: Peer) -> bool:
        """``peer``'s address left DNS: send it nothing new from now on.

        What it holds is answered there, or, if it dies (its connection closes, or it
        goes silent: it is still heartbeated), re-sent by the lost-peer rules. Returns
        True if it holds nothing (the shell closes it now); else it waits in
        `retiring` until `idle_retired` returns it.
        """
        if peer.seq:
            self.peers.remove(peer)
            peer.seq = 0  # (not ours: `_set_state` and `hello` leave it out of the index)
            self._leave(peer)
            self._greet.pop(peer, None)
            if peer.hello is None:
                self._unnamed -= 1  # it never will say HELLO to us now
        held = self._held(peer)
        if not held:
            if peer in self.retiring:
                self.retiring.remove(peer)
            self._forget(peer)
            return True
        if peer not in self.retiring:
            self.retiring.append(peer)
        log.info(
            "%s left DNS: sending it nothing new; %d request(s) it holds finish there",
            peer.endpoint,
            held,
        )
        return False

    def idle_retired(self) -> list[Peer]:
        """Retiring peers that hold no pending call any more: forgotten here, for the
        shell to close."""
        idle = [p for p in self.retiring if not self._held(p)]
        if idle:
            self.retiring = [p for p in self.retiring if p not in idle]
            for peer in idle:
                self._forget(peer)
        return idle

    def _forget(self, peer: Peer) -> None:
        """A retired ``peer`` leaves the index for good: heartbeats, its profile. What
        it said is forgotten too, so if its address comes back it starts as new."""
        self._heard.pop(peer, None)
        prof = peer.profile
        if prof is not None:
            del prof.peers[peer]
            peer.profile = None
            if not prof.peers:  # the last of its kind: which profiles serve what changed
                del self._profiles[prof.key]
                self._regroup()
        peer.hello = None
        peer.role, peer.targets, peer.async_targets = "", frozenset(), frozenset()
        peer.state = _CONNECTING  # (outside `_set_state`: it is in no index now)

    def set_unresolved(self, unresolved: dict[str, str]) -> None:
        """The endpoints whose host name stands for no address yet, with why (`unresolved`)."""
        self.unresolved = dict(unresolved)
        self._answer_info_waiters()

    def _held(self, peer: Peer) -> int:
        """Pending calls ``peer`` holds (a cancelled one may still be in its outstanding)."""
        calls = self.calls
        return sum(1 for rid in peer.outstanding if rid in calls)

    # --- calls -------------------------------------------------------------------------------

    def submit(self, call: Call) -> None:
        """Take ``call``: send it now if a peer has room, else queue it.

        Its deadline starts now. If the client is closed it fails at once.
        """
        if self.closed:
            call.complete(call, None, ZeromeshError("the client is closed"))
            return
        self.calls[call.id] = call
        deadline = self.clock() + call.timeout
        call.deadline = deadline
        heap = self._deadlines
        if len(heap) > 2 * len(self.calls) + 1024:
            # Answered calls leave their deadline behind until it passes: at a high call
            # rate and a long timeout that is most of the heap. Keep it to what is live,
            # so memory follows the calls in flight, not the rate times the timeout.
            calls = self.calls
            heap[:] = [entry for entry in heap if entry[1] in calls]
            heapq.heapify(heap)
        heapq.heappush(heap, (deadline, call.id))
        if not self._wake_at or deadline < self._wake_at:
            self._wake(deadline)
        if call.target in self._async_targets:
            call.queue += _ASYNC_QUEUE
        if not self._queues.get(call.queue):
            # Nobody waits ahead of it (the common case): it need not queue to be sent.
            peer = self._pick(call.target, call.on_item is not None)
            if peer is not None:
                self._send(peer, call)
                return
            if self._all_busy:
                self._queue(call.queue).append(call)
                return
        self._queue(call.queue).append(call)
        self._dispatch(call.queue)

    def cancel(self, rid: int) -> bool:
        """The caller gave up on ``rid``: forget it, and tell its peer to drop it.

        True if the call was still pending (so its ``complete`` will never run).
        """
        call = self.calls.pop(rid, None)
        if call is None:
            return False
        peer = call.peer
        if peer is None:
            q = self._queues.get(call.queue)
            if q is not None and call in q:
                q.remove(call)
                self._dispatch(call.queue)  # it may have held up the one behind it
        elif rid in peer.outstanding:
            self.outbox.append(SendCancel(peer, rid))
        return True

    def close(self) -> None:
        """Fail every pending call, say goodbye to the peers that know us. Idempotent."""
        if self.closed:
            return
        self.closed = True
        for call in list(self.calls.values()):
            self._finish(call, None, ZeromeshError("the client was closed before a reply came"))
        for peer in self.peers + self.retiring:
            if peer.state is not _CONNECTING:
                self.outbox.append(SendBye(peer))

    # --- what peers say ----------------------------------------------------------------------

    def reply(self, peer: Peer, rid: int, value: Any) -> None:
        """``peer`` answered ``rid`` with ``value`` (the first answer completes the call).

        Dispatches nothing: call `heard` once the batch of messages is handled.
        """
        if rid in peer.outstanding:
            self._release(peer, rid)
        call = self.calls.pop(rid, None)
        if call is not None:
            call.complete(call, value, None)

    def error(self, peer: Peer, msg: Error) -> None:
        """``peer`` answered ``msg.id`` with an ERROR: re-queue it, or fail the call.

        Dispatches nothing: call `heard` once the batch of messages is handled.
        """
        rid = msg.id
        if rid in peer.outstanding:
            self._release(peer, rid)
        call = self.calls.get(rid)
        if call is None:
            if rid == 0:
                log.warning("%s reported a protocol error: %s", peer.endpoint, msg.message)
            return
        code = msg.code
        held = call.peer is peer
        if code == ErrorCode.DRAINING:
            if peer.state is _READY:
                self._set_state(peer, _DRAINING)
            if held:
                # Not started: safe to send elsewhere, and it does not use up an attempt.
                call.peer = None
                self._requeue(call)
            return
        if peer.role != "broker":
            if code == ErrorCode.OVERLOADED:
                # That worker is full (it never started this one): try another for a
                # while, within the call's attempts.
                self._rest(peer)
                if held:
                    self._retry(call, f"{peer.endpoint}: {msg.message}", Overloaded)
                return
            if code == ErrorCode.WORKER_LOST:
                if held:
                    self._retry(call, f"{peer.endpoint}: {msg.message}", WorkerLost)
                return
        del self.calls[rid]
        exc = msg.to_exception()
        exc.detail = msg.detail
        if call.items and isinstance(exc, WorkerLost):
            exc.items = call.items  # a broker's: how many of the stream's items came
        call.complete(call, None, exc)

    def bad_message(self, peer: Peer, exc: ProtocolError) -> None:
        """A message from ``peer`` did not decode; fail its call if it names one."""
        log.warning("malformed message from %s: %s", peer.endpoint, exc)
        call = self.calls.pop(exc.request_id, None) if exc.request_id else None
        if call is not None:
            if call.id in peer.outstanding:
                self._release(peer, call.id)
            call.complete(call, None, exc)

    def item(self, peer: Peer, rid: int, values: list[Any]) -> None:
        """An ITEM of stream ``rid`` (``values``: its items, one unless batched): to
        its call's ``on_item``, if still pending."""
        call = self.calls.get(rid)
        if call is not None and call.on_item is not None and call.peer is peer:
            call.items += len(values)
            call.on_item(values)

    def end(self, peer: Peer, rid: int, items: int) -> None:
        """Stream ``rid`` ended after ``items`` items: it completes with that count."""
        self.reply(peer, rid, items)

    def grant(self, rid: int, credit: int) -> None:
        """The consumer of stream ``rid`` read ``credit`` more items: tell its worker."""
        call = self.calls.get(rid)
        if call is not None and call.peer is not None and rid in call.peer.outstanding:
            self.outbox.append(SendCredit(call.peer, rid, credit))

    def progress(self, msg: Progress) -> None:
        """A running handler's PROGRESS: to the call's ``on_progress``, if still pending."""
        call = self.calls.get(msg.id)
        if call is not None and call.on_progress is not None:
            call.on_progress(msg)

    def hello(self, peer: Peer, msg: Hello) -> None:
        """``peer`` said who it is: READY with its capacity, or DRAINING with none."""
        if msg.role not in ("worker", "broker"):
            log.warning("%s answered as a %r, not a worker or broker", peer.endpoint, msg.role)
            return
        if not peer.seq:
            return  # retired: it gets nothing new, whatever it says
        now = self.clock()
        first = peer.hello is None
        if first:
            self._unnamed -= 1
        peer.hello = msg
        self._stamp(peer)
        peer.hello_at = now
        targets = _targets(msg.services)
        async_targets = _targets(msg.async_handlers)
        ready = msg.capacity > 0
        limits = (msg.capacity, msg.threads, msg.async_slots) if ready else None
        said = (msg.role, targets, async_targets)
        prof = peer.profile
        if (
            said != (peer.role, peer.targets, peer.async_targets)
            or (limits is not None and limits != (peer.capacity, peer.threads, peer.async_slots))
            or (prof is not None and prof.streams != msg.streams)
        ):
            # What it serves or how much changed (or its first HELLO): out of its pools
            # while the numbers change, in again below if READY. Rare.
            self._leave(peer)
            refile = async_targets != peer.async_targets
            peer.role, peer.targets, peer.async_targets = said
            if limits is not None:
                peer.capacity, peer.threads, peer.async_slots = limits
            self._profile(peer)
            if refile:
                self._refile()
        if not ready:
            self._set_state(peer, _DRAINING)
        else:
            if peer.state is _READY:
                self._join(peer)  # (if it left above)
            else:
                log.info(
                    "%s %s ready: %s %s (pid %d), capacity %d (%s)",
                    "connected to" if first else "reconnected to",
                    peer.endpoint,
                    msg.role,
                    msg.name,
                    msg.pid,
                    msg.capacity,
                    f"{msg.threads} thread(s), {msg.async_slots} async"
                    if msg.threads
                    else f"protocol {msg.protocol}",
                )
                self._set_state(peer, _READY)
                self._dispatch_all()
        self._answer_info_waiters()

    def _answer_info_waiters(self) -> None:
        """``on_done()`` of each `ask_info` every peer has answered since (and no name is
        still in its first lookup)."""
        if not self._info_waiters or "" in self.unresolved.values():
            return
        waiters, self._info_waiters = self._info_waiters, []
        for since, on_done in waiters:
            if all(p.hello_at > since for p in self.peers):
                on_done()
            else:
                self._info_waiters.append((since, on_done))

    def disconnect(self, peer: Peer, reason: str) -> None:
        """``peer`` drains: it gets nothing new; its answers to what it holds still count."""
        log.info("%s is draining (%s): sending it nothing new", peer.endpoint, reason)
        self._stamp(peer)  # (it spoke: alive now)
        self._set_state(peer, _DRAINING)

    def heard(self, peer: Peer) -> None:
        """A batch of messages from ``peer`` was handled: it lives; send what it freed."""
        self._stamp(peer)
        self._dispatch_all()

    def handshake(self, peer: Peer) -> None:
        """A handshake with ``peer`` succeeded: whatever refused us before is fixed."""
        peer.refused = ""

    def refused(self, peer: Peer, reason: str) -> None:
        """``peer``'s handshake failed (wrong key, key not allowed: ``reason`` says
        which). Once every peer has refused us, what waits fails with
        `AuthenticationError` instead of timing out in silence."""
        peer.refused = reason
        self._dispatch_all()

    def dropped(self, peer: Peer) -> None:
        """The connection to ``peer`` closed (hand over the replies read before first)."""
        self._lost(peer, "connection closed")
        self._dispatch_all()

    def unsent(self, peer: Peer, call: Call) -> None:
        """`SendCall` ``(peer, call)`` failed: ``peer`` is not connected after all.

        The outbox must hold only the commands not yet carried out. Those sends and the
        later ones to ``peer`` are taken back and queued again without using an
        attempt; what ``peer`` did get counts as lost.
        """
        back = [call]
        keep: list[Command] = []
        for cmd in self.outbox:
            if type(cmd) is SendCall and cmd.peer is peer:
                back.append(cmd.call)
            else:
                keep.append(cmd)
        self.outbox[:] = keep
        for c in back:
            if c.id in peer.outstanding:
                self._release(peer, c.id)
        self._lost(peer, "cannot send to it")
        for c in reversed(back):
            if c.peer is peer and c.id in self.calls:
                c.peer = None
                self._requeue(c)
        self._dispatch_all()

    def wants_hello(self, peer: Peer) -> bool:
        """Whether a greeting to ``peer`` is still wanted (it has not answered one)."""
        return not self.closed and peer.state is _CONNECTING

    # --- time ----------------------------------------------------------------------------------

    def tick(self) -> None:
        """Every heartbeat: greet, ping quiet peers, lose silent ones, dispatch.

        Looks at the peers quiet for most of an interval (the front of the order of
        the heard) and those it greets, not at the peers heard from lately.
        """
        if self.closed:
            return
        now = self.clock()
        hb = self.heartbeat
        out = self.outbox
        gone: list[tuple[Peer, float]] = []
        for peer in self._heard:  # least lately heard first
            quiet = now - peer.last_seen
            if quiet <= hb * 0.9:
                break  # it and all behind it were heard lately
            if quiet > LIVENESS * hb:
                gone.append((peer, quiet))
            elif peer.state is _READY and now - peer.pinged_at > hb * 0.9:
                peer.pinged_at = now
                out.append(SendPing(peer))
        for peer, quiet in gone:
            log.warning(
                "worker at %s missed %d heartbeats (silent %.1f s): treating it as lost",
                peer.endpoint,
                LIVENESS,
                quiet,
            )
            self._lost(peer, f"silent for {quiet:.1f} s")
        # HELLO, not PING, to a draining peer too: if a fresh worker replaced it on its
        # endpoint and we missed the disconnect, its answer makes it READY again. (Not
        # yet to one lost just now.)
        lost_now = {peer for peer, _ in gone}
        for peer in sorted(self._greet, key=_by_seq):
            if peer not in lost_now:
                out.append(SendHello(peer))
        self._dispatch_all()

    def on_timer(self) -> None:
        """The time asked for by `WakeAt` has come: expire calls, end rests."""
        self._wake_at = 0.0
        now = self.clock()
        heap = self._deadlines
        moved = False  # a queued call expired: the one behind it may go now
        while heap and heap[0][0] <= now:
            _, rid = heapq.heappop(heap)
            call = self.calls.get(rid)
            if call is None:
                continue
            del self.calls[rid]
            call.complete(call, None, self._expired(call))
            peer = call.peer
            if peer is None:
                moved = True
            elif rid in peer.outstanding:
                self.outbox.append(SendCancel(peer, rid))
        rested = self._end_rests(now)
        if moved or rested:
            self._dispatch_all()
        nxt = heap[0][0] if heap else 0.0
        rests = self._rests
        if rests and (not nxt or rests[0][0] < nxt):
            nxt = rests[0][0]
        if nxt:
            self._wake(nxt)

    # --- reading the state ---------------------------------------------------------------------

    def capacity(self) -> int:
        """Total capacity of the READY peers (safe to read from any thread)."""
        return self._capacity

    def slots(self) -> Slots:
        """What the READY peers run at once, of each kind, all together.

        A 1.0 peer (no ``threads``) counts with its whole capacity as threads: it names
        no async handler, so everything sent to it counts as plain.
        """
        threads = async_slots = 0
        async_targets: set[str] = set()
        for p in self.peers:
            if p.state is _READY:
                threads += p.threads or p.capacity
                async_slots += p.async_slots
                async_targets.update(p.async_targets)
        return Slots(threads, async_slots, frozenset(async_targets))

    def queued(self) -> int:
        """Pending calls not held by any peer."""
        return sum(1 for c in self.calls.values() if c.peer is None)

    def ask_info(self, on_done: Callable[[], None]) -> float:
        """Ask every peer for a fresh HELLO; ``on_done()`` once all have answered.

        Returns the time of asking, for `info_rows`. The caller waits (with its own
        timeout) in whatever way suits its loop.
        """
        since = self.clock()
        self._info_waiters.append((since, on_done))
        for peer in self.peers:
            self.outbox.append(SendHello(peer))
        return since

    def info_rows(self, since: float) -> list[WorkerInfo]:
        """One row per peer: what it said in a HELLO later than ``since``; and one per
        endpoint whose host name stands for no address yet (``unresolved``: why)."""
        rows = [
            WorkerInfo(endpoint=name, state="unreachable", unresolved=why or "not looked up yet")
            for name, why in self.unresolved.items()
        ]
        for peer in self.peers:
            row = WorkerInfo(endpoint=peer.endpoint)
            h = peer.hello
            if h is None or peer.hello_at <= since:
                row["state"] = "unreachable"
                if peer.refused:
                    row["refused"] = peer.refused  # a CURVE handshake failed: why
            else:
                row.update(
                    state="draining" if h.capacity <= 0 else "ready",
                    role=h.role,
                    name=h.name,
                    host=h.host,
                    pid=h.pid,
                    version=h.version,
                    services=h.services,
                    capacity=h.capacity,
                    in_flight=h.in_flight,
                    uptime=h.uptime,
                    protocol=h.protocol,
                    threads=h.threads,
                    async_slots=h.async_slots,
                    async_handlers=h.async_handlers,
                    stats=h.stats,
                )
            rows.append(row)
        return rows

    # --- internals ------------------------------------------------------------------------------

    def _dispatch(self, service: str) -> None:
        q = self._queues.get(service)
        calls = self.calls
        while q:
            call = q[0]
            if call.id not in calls:  # timed out or failed while queued
                q.popleft()
                continue
            peer = self._pick(call.target, call.on_item is not None)
            if peer is None:
                # READY peers serve it, all busy: it waits at the head of its queue. Else
                # maybe nobody can serve it, or everybody refused our key (then it fails,
                # and the next one gets its turn), or it waits for a peer to be READY.
                if self._all_busy or not (self._refused_by_all(call) or self._unknown(call)):
                    return
                q.popleft()
                continue
            q.popleft()
            self._send(peer, call)

    def _send(self, peer: Peer, call: Call) -> None:
        """``peer`` (picked) takes ``call``."""
        call.peer = peer
        peer.outstanding.add(call.id)
        if call.target in peer.async_targets and peer.threads:
            peer.async_out.add(call.id)
        for pool, kind in peer.pools or ():  # (inline `_place`: once per request)
            pool.update(peer, kind)
        self.outbox.append(SendCall(peer, call))

    def _dispatch_all(self) -> None:
        for service in list(self._queues):
            self._dispatch(service)

    def _pick(self, target: str, stream: bool = False) -> Peer | None:
        """The READY peer with the fewest outstanding requests of ``target``'s kind there
        and room for one more (module docstring, "Rules"), from ``target``'s pool; for
        a ``stream`` call, from the pool of the peers whose HELLO said ``streams``.

        None if there is none; then `_all_busy` says whether READY peers serve it (all
        full or resting).
        """
        rests = self._rests
        if rests and rests[0][0] <= (now := self.clock()):
            self._end_rests(now)  # before on_timer comes: as if it had
        pool = (self._stream_pools if stream else self._pools).get(target)
        if pool is None:
            pool = self._pool(target, stream)
        low = pool.low
        if low >= 0:
            return next(iter(pool.buckets[low]))  # (the first of the lowest bucket)
        self._all_busy = pool.ready > 0
        return None

    def _unknown(self, call: Call) -> bool:
        """Fail ``call`` if every peer has said what it serves and none serves it."""
        if not self.peers or self._unnamed or self.unresolved:
            return False
        profiles = self._profiles.values()
        if (
            call.on_item is not None
            and not any(prof.streams and prof.kind(call.target) is not None for prof in profiles)
            and self._cannot_stream(call)
        ):
            return True
        if any(prof.kind(call.target) is not None for prof in profiles):
            return False
        served = sorted({t for prof in profiles for t in prof.targets})
        self._finish(
            call,
            None,
            UnknownHandler(
                f"no worker serves {call.target!r}; served: {', '.join(served) or 'nothing'}"
            ),
        )
        return True

    def _cannot_stream(self, call: Call) -> bool:
        """Fail stream ``call`` if the peers that serve its target cannot stream (SPEC
        7.11: workers or brokers of an older release); True if it failed."""
        old = [p for p in self.peers if p.serves(call.target)]
        if not old:
            return False
        who = ", ".join(
            f"{p.endpoint} ({p.role}, protocol {p.hello.protocol if p.hello else '?'})" for p in old
        )
        self._finish(
            call,
            None,
            UnknownHandler(
                f"{call.target}: no worker serving it can stream (their HELLO did not say "
                f"streams: {who}); upgrade them (and any broker between) to a zeromesh "
                "release that streams (protocol 1.2), or call() it to get all its items "
                "as one list"
            ),
        )
        return True

    def _refile(self) -> None:
        """A peer named other async handlers: move what waits into the queue of its kind.

        Rare (a peer's first HELLO, a changed service), so it may take time in the
        number of calls waiting.
        """
        self._async_targets = frozenset().union(
            *(prof.async_targets for prof in self._profiles.values())
        )
        waiting = sorted(
            (c for q in self._queues.values() for c in q if c.id in self.calls),
            key=lambda c: c.id,  # submit order (a re-sent call's id is older still)
        )
        self._queues.clear()
        for call in waiting:
            call.queue = call.target.partition(".")[0]
            if call.target in self._async_targets:
                call.queue += _ASYNC_QUEUE
            self._queue(call.queue).append(call)

    def _queue(self, key: str) -> deque[Call]:
        """The queue named ``key`` (made if need be)."""
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = deque()
        return q

    def _requeue(self, call: Call) -> None:
        """Put ``call`` back at the head of its queue."""
        self._queue(call.queue).appendleft(call)

    def _lost(self, peer: Peer, why: str) -> None:
        """``peer`` is gone (CONNECTING now): re-queue what it held, or fail it with
        WorkerLost."""
        self._set_state(peer, _CONNECTING)
        calls = self.calls
        held = [calls[rid] for rid in peer.outstanding if rid in calls]
        peer.outstanding.clear()
        peer.async_out.clear()
        if held:
            log.warning(
                "worker at %s lost (%s) holding %d request(s): re-sending",
                peer.endpoint,
                why,
                len(held),
            )
        for call in held:
            if call.peer is peer:
                self._retry(call, f"worker at {peer.endpoint} lost ({why})", WorkerLost)

    def _retry(self, call: Call, why: str, error: type[ZeromeshError]) -> None:
        """Re-queue ``call`` if it has attempts left; else fail it with ``error``. A
        stream that delivered items fails `WorkerLost` at once (they were consumed)."""
        call.peer = None
        if call.items:
            lost = WorkerLost(
                f"{call.target}: {why} after {call.items} stream item(s); a stream is not "
                "re-sent once items arrived: start it again if you need the rest"
            )
            lost.items = call.items
            self._finish(call, None, lost)
            return
        call.attempts -= 1
        if call.attempts > 0:
            self.retried["overloaded" if error is Overloaded else "worker_lost"] += 1
            self._requeue(call)
            return
        self._finish(
            call,
            None,
            error(f"{call.target}: {why}; no retries left (raise retries= to re-send more)"),
        )

    def _rest(self, peer: Peer) -> None:
        """Send ``peer`` nothing new for a moment: it answered OVERLOADED."""
        until = peer.resting_until = self.clock() + OVERLOAD_REST_S
        heapq.heappush(self._rests, (until, next(self._entries), peer))
        self._place(peer)
        if not self._wake_at or until < self._wake_at:
            self._wake(until)

    def _end_rests(self, now: float) -> bool:
        """End the rests that are over by ``now``; True if one was."""
        rests = self._rests
        ended = False
        while rests and rests[0][0] <= now:
            until, _, peer = heapq.heappop(rests)
            if peer.resting_until == until:  # (else rested again since, for longer)
                peer.resting_until = 0.0
                self._place(peer)
                ended = True
        while rests and rests[0][2].resting_until != rests[0][0]:
            heapq.heappop(rests)  # superseded: it must not ask for a wake-up
        return ended

    # --- the index (module docstring, "What it costs") ----------------------------------------

    def _release(self, peer: Peer, rid: int) -> None:
        """``peer`` no longer holds ``rid`` (which it did)."""
        peer.outstanding.remove(rid)
        peer.async_out.discard(rid)
        for pool, kind in peer.pools or ():  # (inline `_place`: once per request)
            pool.update(peer, kind)

    def _place(self, peer: Peer) -> None:
        """Put ``peer`` where it belongs in each of its pools (what it holds changed, a
        rest began or ended)."""
        for pool, kind in peer.pools or ():
            pool.update(peer, kind)

    def _set_state(self, peer: Peer, state: str) -> None:
        """Every change of a peer's state goes through here: its pools, the order of
        the heard and the greetings follow."""
        old = peer.state
        if old is state:
            return
        peer.state = state
        if not peer.seq:  # retired (`retire_peer`): heartbeated while it lives, no more
            if state is _CONNECTING:
                self._heard.pop(peer, None)
            return
        if state is _READY:
            self._join(peer)
            self._greet.pop(peer, None)
        else:
            self._leave(peer)
            self._greet[peer] = None
        if state is _CONNECTING:
            del self._heard[peer]
        elif old is _CONNECTING:
            self._heard[peer] = None  # at the end: HELLO and DISCONNECT stamp it first

    def _stamp(self, peer: Peer) -> None:
        """``peer`` is alive now: to the end of the order of the heard."""
        peer.last_seen = self.clock()
        if peer.state is not _CONNECTING:
            self._heard.move_to_end(peer)

    def _join(self, peer: Peer) -> None:
        """Put a READY ``peer`` in its profile's pools (if it is not in them)."""
        if peer.pools is not None:
            return
        prof = peer.profile
        assert prof is not None, "READY before a HELLO"
        peer.pools = prof.members
        self._capacity += peer.capacity
        for pool, kind in prof.members:
            pool.ready += 1
            pool.update(peer, kind)

    def _leave(self, peer: Peer) -> None:
        """Take ``peer`` out of its pools (if it is in them)."""
        pools = peer.pools
        if pools is None:
            return
        peer.pools = None
        self._capacity -= peer.capacity
        for pool, _ in pools:
            pool.ready -= 1
            pool.update(peer, _OUT)

    def _profile(self, peer: Peer) -> None:
        """File ``peer`` (out of its pools) under the profile its HELLO says."""
        broker = peer.role == "broker"
        key = (
            broker,
            frozenset() if broker else peer.targets,
            peer.async_targets,
            not peer.threads,
            _streams(peer),
        )
        old = peer.profile
        if old is not None:
            if old.key == key:
                return
            del old.peers[peer]
        prof = self._profiles.get(key)
        regroup = prof is None or (old is not None and not old.peers)
        if old is not None and not old.peers:
            del self._profiles[old.key]
        if prof is None:
            prof = self._profiles[key] = _Profile(key)
        prof.peers[peer] = None
        peer.profile = prof
        if regroup:
            self._regroup()

    def _regroup(self) -> None:
        """Which profiles serve a target changed: every pool starts over, made again on
        the next pick for its target. Rare (a kind of peer came to or left the mesh)."""
        for p in self._profiles.values():
            p.members.clear()  # (the READY peers' `pools`: the same lists)
        self._pools.clear()
        self._stream_pools.clear()
        self._pools_by_kinds.clear()

    def _pool(self, target: str, stream: bool = False) -> _Pool:
        """``target``'s pool (of its streaming peers only, for a ``stream`` call):
        shared with every target served alike (made if need be: O(READY peers of its
        profiles), once per target and change of profiles)."""
        kinds = tuple(
            (prof, kind)
            for prof in self._profiles.values()
            if (kind := prof.kind(target)) is not None and (prof.streams or not stream)
        )
        pool = self._pools_by_kinds.get(kinds)
        if pool is None:
            pool = self._pools_by_kinds[kinds] = _Pool(self.prefetch)
            for prof, kind in kinds:
                prof.members.append((pool, kind))
                for peer in sorted(prof.peers, key=_by_seq):
                    if peer.pools is not None:  # READY
                        pool.ready += 1
                        pool.update(peer, kind)
        pools = self._stream_pools if stream else self._pools
        if len(pools) >= _MAX_TARGETS:
            pools.clear()
        pools[target] = pool
        return pool

    def _wake(self, when: float) -> None:
        self._wake_at = when
        self.outbox.append(WakeAt(when))

    def _refusals(self) -> str:
        """Why the peers that refused our key did (empty if none did)."""
        return "; ".join(p.refused for p in self.peers if p.refused and p.state is not _READY)

    def _refused_by_all(self, call: Call) -> bool:
        """Fail ``call`` with `AuthenticationError` if every peer refused our key."""
        peers = self.peers
        if not peers or any(not p.refused or p.state is _READY for p in peers):
            return False
        self._finish(call, None, AuthenticationError(f"{call.target}: {self._refusals()}"))
        return True

    def _finish(self, call: Call, value: Any, exc: BaseException | None) -> None:
        self.calls.pop(call.id, None)
        call.complete(call, value, exc)

    def _expired(self, call: Call) -> ZeromeshError:
        if call.peer is not None:
            return Timeout(
                f"{call.target}: no reply within {call.timeout:g} s from {call.peer.endpoint} "
                "(it may still run; raise the timeout with options(timeout=...))"
            )
        ready = [p for p in self.peers if p.state is _READY and p.serves(call.target)]
        if ready:
            return Timeout(
                f"{call.target}: waited {call.timeout:g} s for a free worker; all "
                f"{len(ready)} are busy (add workers or raise the timeout)"
            )
        refusals = self._refusals()
        if refusals:
            return AuthenticationError(f"{call.target}: {refusals}")
        down = ", ".join(p.endpoint for p in self.peers if p.state is not _READY)
        endpoints = ",".join([*self.unresolved, *(p.endpoint for p in self.peers)])
        names = "".join(
            f"; {name} has no address yet ({why or 'its lookup is still running'})"
            for name, why in self.unresolved.items()
        )
        return NoWorkers(
            f"{call.target}: no worker answered within {call.timeout:g} s "
            f"(not reachable: {down or 'none'}{names}); is a worker running there? check "
            f"with `zeromesh ping --connect {endpoints}`"
        )


def _by_seq(peer: Peer) -> int:
    return peer.seq


def _streams(peer: Peer) -> bool:
    """Whether ``peer`` said in its HELLO that it takes stream requests (revision 1.2)."""
    hello = peer.hello
    return hello is not None and hello.streams


def _targets(handlers: dict[str, list[str]]) -> frozenset[str]:
    """``service.handler`` names of a HELLO's handler map."""
    return frozenset(f"{s}.{h}" for s, hs in handlers.items() for h in hs)
