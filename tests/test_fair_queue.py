"""The worker's waiting room: bounded, round-robin between clients, the hog pays."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker._fair_queue import FairQueue


def test_one_flooding_client_delays_another_by_one_item() -> None:
    q: FairQueue[str] = FairQueue(limit=10_000)
    for i in range(5000):
        assert q.push("flood", f"f{i}") is None
    assert q.push("light", "mine") is None
    assert [q.pop(), q.pop()] == ["f0", "mine"]


def test_when_full_the_hog_is_refused_and_others_get_in() -> None:
    q: FairQueue[str] = FairQueue(limit=3)
    for i in range(3):
        assert q.push("flood", f"f{i}") is None
    assert q.push("flood", "f3") == "f3"  # the hog's own request: refused at once
    assert q.push("light", "mine") == "f2"  # the hog's newest makes room
    assert len(q) == 3
    assert sorted(q) == ["f0", "f1", "mine"]


def test_remove_and_pop_order() -> None:
    q: FairQueue[int] = FairQueue(limit=10)
    for item, client in [(1, "a"), (2, "a"), (3, "b"), (4, "c")]:
        q.push(client, item)
    assert q.remove("a", 2)
    assert not q.remove("a", 2)
    assert not q.remove("zz", 1)
    assert [q.pop() for _ in range(4)] == [1, 3, 4, None]
    assert not q


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        FairQueue(0)


ops = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.sampled_from("abcde")),
        st.tuples(st.just("pop"), st.none()),
        st.tuples(st.just("remove"), st.sampled_from("abcde")),
    ),
    max_size=300,
)


@settings(max_examples=300, deadline=None)
@given(limit=st.integers(1, 12), ops=ops)
def test_against_a_model(limit: int, ops: list[tuple[str, str | None]]) -> None:
    """Never over the limit, nothing lost or duplicated, FIFO per client, and a refused
    item always belongs to a client holding (about) the most."""
    q: FairQueue[tuple[str, int]] = FairQueue(limit)
    held: dict[str, list[tuple[str, int]]] = {c: [] for c in "abcde"}
    seq = 0
    for op, client in ops:
        if op == "push":
            assert client is not None
            seq += 1
            item = (client, seq)
            before = {c: len(v) for c, v in held.items()}
            refused = q.push(client, item)
            held[client].append(item)
            if refused is not None:
                owner = refused[0]
                # The refused one was its owner's newest, and the owner held the most
                # (pops in a round may leave it one behind the true maximum).
                assert held[owner][-1] == refused
                held[owner].pop()
                assert before[owner] + (owner == client) >= max(before.values()) - 1
            else:
                assert sum(before.values()) < limit
        elif op == "pop":
            item = q.pop()
            if item is None:
                assert not any(held.values())
            else:
                assert held[item[0]][0] == item  # oldest of its client
                held[item[0]].pop(0)
        else:
            assert client is not None
            if held[client]:
                victim = held[client][len(held[client]) // 2]
                assert q.remove(client, victim)
                held[client].remove(victim)
        assert len(q) == sum(len(v) for v in held.values()) <= limit
        assert Counter(q) == Counter(i for v in held.values() for i in v)
