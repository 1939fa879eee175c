"""Endpoints from DNS: the name table's rules with a fake clock, and its shell
(`zmqio.NameWatch`) on an asyncio loop with a fake resolver. No sockets."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import pytest

from zmqio import NameTable, NameWatch, lookup_target
from zmqio._names import RETRY_FIRST_S


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def table(*endpoints: str, interval: float = 30.0) -> tuple[NameTable, Clock]:
    clock = Clock()
    return NameTable(endpoints, interval=interval, clock=clock), clock


def test_only_host_names_are_looked_up() -> None:
    t, _ = table(
        "ipc:///tmp/zm/w1.sock",
        "tcp://127.0.0.1:5555",
        "tcp://[::1]:5555",
        "tcp://10.1.2.3:5555",
        "tcp://eth0;10.0.0.1:5555",
        "tcp://workers.internal:5555",
        "tcp://localhost:5600",
        "tcp://workers.internal:5555",
    )
    assert t.fixed == [
        "ipc:///tmp/zm/w1.sock",
        "tcp://127.0.0.1:5555",
        "tcp://[::1]:5555",
        "tcp://10.1.2.3:5555",
        "tcp://eth0;10.0.0.1:5555",
    ]
    assert list(t.names) == ["tcp://workers.internal:5555", "tcp://localhost:5600"]
    assert lookup_target("tcp://workers.internal:5555") == ("workers.internal", 5555)
    assert lookup_target("tcp://*:5555") is None


def test_first_lookup_at_once_then_every_interval() -> None:
    t, clock = table("tcp://w.test:5555", interval=30)
    assert t.due() == [("tcp://w.test:5555", "w.test", 5555)]
    assert t.due() == []  # handed out: not again until answered
    assert t.next_due() is None
    t.resolved("tcp://w.test:5555", ["10.0.0.1"])
    assert t.next_due() == clock.now + 30
    clock.now += 29.9
    assert t.due() == []
    clock.now += 0.1
    assert [d[0] for d in t.due()] == ["tcp://w.test:5555"]


def test_new_addresses_join_and_vanished_ones_leave() -> None:
    t, _ = table("tcp://w.test:5555")
    t.due()
    up = t.resolved("tcp://w.test:5555", ["10.0.0.1", "10.0.0.2"])
    assert up.joined == ("tcp://10.0.0.1:5555", "tcp://10.0.0.2:5555")
    assert up.vanished == ()
    assert "+tcp://10.0.0.1:5555" in up.note
    same = t.resolved("tcp://w.test:5555", ["10.0.0.2", "10.0.0.1", "10.0.0.2"])
    assert same == ((), (), "", "")  # order and repeats do not matter
    up = t.resolved("tcp://w.test:5555", ["10.0.0.2", "10.0.0.3"])
    assert up.joined == ("tcp://10.0.0.3:5555",)
    assert up.vanished == ("tcp://10.0.0.1:5555",)
    assert t.addresses() == ["tcp://10.0.0.2:5555", "tcp://10.0.0.3:5555"]


def test_an_address_two_names_share_joins_once_and_leaves_with_the_last() -> None:
    t, _ = table("tcp://a.test:5555", "tcp://b.test:5555")
    t.due()
    assert t.resolved("tcp://a.test:5555", ["10.0.0.1"]).joined == ("tcp://10.0.0.1:5555",)
    assert t.resolved("tcp://b.test:5555", ["10.0.0.1"]).joined == ()
    assert t.resolved("tcp://a.test:5555", ["10.0.0.9"]).vanished == ()  # b still has it
    assert t.resolved("tcp://b.test:5555", ["10.0.0.8"]).vanished == ("tcp://10.0.0.1:5555",)


def test_an_address_given_as_written_is_never_joined_or_drained() -> None:
    t, _ = table("tcp://10.0.0.1:5555", "tcp://w.test:5555")
    t.due()
    up = t.resolved("tcp://w.test:5555", ["10.0.0.1", "10.0.0.2"])
    assert up.joined == ("tcp://10.0.0.2:5555",)
    up = t.resolved("tcp://w.test:5555", ["10.0.0.2"])
    assert up.vanished == ()
    assert t.fixed == ["tcp://10.0.0.1:5555"]


def test_a_failed_lookup_keeps_the_last_addresses_and_warns_once_per_change() -> None:
    t, clock = table("tcp://w.test:5555", interval=30)
    t.due()
    t.resolved("tcp://w.test:5555", ["10.0.0.1"])
    clock.now += 30
    t.due()
    first = t.failed("tcp://w.test:5555", "Temporary failure in name resolution")
    assert first.joined == first.vanished == ()
    assert "keeping its last 1 address(es)" in first.warning
    assert "getent hosts w.test" in first.warning  # says what to check
    assert t.addresses() == ["tcp://10.0.0.1:5555"]
    # Retried sooner than the interval, backing off; the same error is not said again.
    waits = []
    for _ in range(8):
        waits.append(t.next_due() - clock.now)  # type: ignore[operator]
        clock.now = t.next_due()  # type: ignore[assignment]
        assert t.due()
        assert t.failed("tcp://w.test:5555", "Temporary failure in name resolution").warning == ""
    assert waits == [RETRY_FIRST_S * 2**i for i in range(6)] + [30, 30]
    other = t.failed("tcp://w.test:5555", "Name or service not known")
    assert "Name or service not known" in other.warning  # a new error is said
    t.due()
    back = t.resolved("tcp://w.test:5555", ["10.0.0.1"])
    assert back.joined == back.vanished == ()
    assert "resolves again" in back.note
    assert t.next_due() == clock.now + 30


def test_no_address_counts_as_a_failure() -> None:
    t, _ = table("tcp://w.test:5555")
    t.due()
    t.resolved("tcp://w.test:5555", ["10.0.0.1"])
    up = t.resolved("tcp://w.test:5555", [])
    assert up.vanished == ()
    assert "no IPv4 address" in up.warning


def test_unresolved_names_say_why() -> None:
    t, _ = table("tcp://a.test:5555", "tcp://b.test:5555", "ipc:///tmp/x")
    assert t.unresolved() == {"tcp://a.test:5555": "", "tcp://b.test:5555": ""}
    t.due()
    t.resolved("tcp://a.test:5555", ["10.0.0.1"])
    t.failed("tcp://b.test:5555", "Name or service not known")
    assert t.unresolved() == {"tcp://b.test:5555": "Name or service not known"}


def test_interval_zero_looks_up_until_resolved_then_never() -> None:
    t, clock = table("tcp://w.test:5555", interval=0)
    t.due()
    t.failed("tcp://w.test:5555", "down")
    clock.now += RETRY_FIRST_S
    assert t.due()
    t.resolved("tcp://w.test:5555", ["10.0.0.1"])
    assert t.next_due() is None
    clock.now += 10**6
    assert t.due() == []
    with pytest.raises(ValueError, match="resolve interval"):
        NameTable([], interval=-1, clock=clock)


# --- the shell: lookups on a thread, answers on the loop -----------------------------------


async def until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not true within {timeout:g} s: {what}")
        await asyncio.sleep(0.005)


def test_name_watch_follows_the_resolver(caplog: pytest.LogCaptureFixture) -> None:
    answers: dict[str, list[str] | OSError] = {"w.test": ["10.0.0.1", "10.0.0.2"]}
    lookups: list[str] = []

    def lookup(host: str, port: int) -> list[str]:
        lookups.append(host)
        answer = answers[host]
        if isinstance(answer, OSError):
            raise answer
        return list(answer)

    joined: list[tuple[str, str]] = []
    left: list[str] = []
    changes: list[dict[str, str]] = []

    async def main() -> None:
        t = NameTable(["tcp://w.test:5555"], interval=0.05, clock=time.monotonic)
        watch = NameWatch(
            t,
            asyncio.get_running_loop(),
            log=logging.getLogger("zeromesh.test"),
            on_join=lambda a, n: joined.append((a, n)),
            on_leave=left.append,
            on_change=lambda: changes.append(t.unresolved()),
            lookup=lookup,
        )
        watch.start()
        try:
            await until(lambda: len(joined) == 2, "both addresses joined")
            assert sorted(joined) == [
                ("tcp://10.0.0.1:5555", "tcp://w.test:5555"),
                ("tcp://10.0.0.2:5555", "tcp://w.test:5555"),
            ]
            assert changes[0] == {}
            answers["w.test"] = ["10.0.0.2", "10.0.0.3"]
            await until(lambda: left == ["tcp://10.0.0.1:5555"], "10.0.0.1 drained")
            assert joined[-1] == ("tcp://10.0.0.3:5555", "tcp://w.test:5555")
            # A failing lookup keeps what was there and warns once, however often it runs.
            answers["w.test"] = OSError("Temporary failure in name resolution")
            n = len(lookups)
            await until(lambda: len(lookups) >= n + 3, "three failed lookups")
            assert left == ["tcp://10.0.0.1:5555"]
            answers["w.test"] = ["10.0.0.3"]
            await until(lambda: left[-1] == "tcp://10.0.0.2:5555", "10.0.0.2 drained")
        finally:
            watch.close()

    with caplog.at_level(logging.INFO, logger="zeromesh.test"):
        asyncio.run(main())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "cannot resolve 'w.test'" in warnings[0]
    assert "keeping its last 2 address(es)" in warnings[0]
