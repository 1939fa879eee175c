"""The dispatch rules for peers that come and go with DNS: pure, with a fake clock.

A retired peer (its address left the name it came from) gets nothing new, finishes
what it holds there, and gives it back only if its connection dies; a name with no
address yet keeps calls from failing `UnknownHandler` and explains `NoWorkers`.
"""

from __future__ import annotations

import resource

import pytest
from meshkit import free_port
from test_client_dispatch import Rig, kinds, sent

from client import Client, NoWorkers, UnknownHandler, WorkerLost
from client._dispatch import Peer, SendBye


def test_a_retired_peer_gets_nothing_new_and_finishes_what_it_holds() -> None:
    r = Rig("w1", "w2", prefetch=10)
    r.hello("w1")
    r.hello("w2")
    r.take()
    held = [r.submit() for _ in range(4)]
    assert sorted(ep for ep, _ in sent(r.take())) == ["w1", "w1", "w2", "w2"]
    on_w1 = [rid for rid in held if rid in r["w1"].outstanding]
    assert r.d.retire_peer(r["w1"]) is False  # it holds calls: kept until they finish
    assert r.d.retiring == [r["w1"]]
    assert r["w1"] not in r.d.peers
    assert r.d.capacity() == 1
    later = [r.submit() for _ in range(3)]
    assert sent(r.take()) == [("w2", rid) for rid in later]
    r.d.tick()  # still heartbeated (below); nothing new goes to it
    assert [c for c in sent(r.take()) if c[0] == "w1"] == []
    r.reply("w1", on_w1[0], "done there")
    assert r.outcomes.value(on_w1[0]) == "done there"
    assert r.d.idle_retired() == []
    r.reply("w1", on_w1[1])
    assert r.d.idle_retired() == [r["w1"]]
    assert r.d.retiring == []
    assert r.d.retried == {"overloaded": 0, "worker_lost": 0}


def test_an_idle_peer_is_retired_at_once() -> None:
    r = Rig("w1", "w2")
    r.hello("w1")
    assert r.d.retire_peer(r["w1"]) is True
    assert r.d.retiring == []
    assert r.d.peers == [r["w2"]]


def test_a_retired_peer_whose_connection_dies_gives_its_calls_back() -> None:
    r = Rig("w1", "w2", prefetch=10)
    r.hello("w1")
    r.take()
    rids = [r.submit() for _ in range(2)]
    assert [ep for ep, _ in sent(r.take())] == ["w1", "w1"]
    r.d.retire_peer(r["w1"])
    r.d.dropped(r["w1"])  # its connection closed: the lost-peer rules re-send
    assert r.d.retried["worker_lost"] == 2
    assert sent(r.take()) == []  # w2 is not ready yet: they wait, they do not fail
    r.hello("w2")
    assert sorted(sent(r.take())) == [("w2", rid) for rid in rids]
    assert r.d.idle_retired() == [r["w1"]]


def test_a_retired_peer_with_no_retries_left_fails_worker_lost_only_if_it_dies() -> None:
    r = Rig("w1", "w2")
    r.hello("w1")
    r.hello("w2")
    r.take()
    rid = r.submit(retries=0)
    ((ep, _),) = sent(r.take())
    r.d.retire_peer(r[ep])
    assert rid in r.d.calls  # retiring alone fails nothing
    r.d.dropped(r[ep])
    assert isinstance(r.outcomes.error(rid), WorkerLost)


def test_a_retired_peer_that_comes_back_gets_work_again() -> None:
    r = Rig("w1", prefetch=10)
    r.hello("w1")
    r.take()
    rid = r.submit()
    r.take()
    r.d.retire_peer(r["w1"])
    r.submit()
    assert sent(r.take()) == []
    r.d.add_peer(r["w1"])  # its address is back in DNS before it was closed
    assert r.d.retiring == []
    assert r.d.peers == [r["w1"]]
    assert len(sent(r.take())) == 1  # READY still: what waited goes to it at once
    r.reply("w1", rid)
    assert r.outcomes.value(rid) == "ok"


def test_closing_says_goodbye_to_retiring_peers_too() -> None:
    r = Rig("w1", prefetch=10)
    r.hello("w1")
    r.take()
    r.submit()
    r.take()
    r.d.retire_peer(r["w1"])
    r.d.close()
    assert kinds(r.take(), SendBye) == ["w1"]


def test_an_unresolved_name_holds_unknown_handler_back_and_explains_no_workers() -> None:
    r = Rig("w1")
    r.d.set_unresolved({"tcp://workers.test:5555": ""})
    r.hello("w1", services={"B": ["y"]})
    rid = r.submit("A.x", timeout=2)
    r.take()
    assert rid in r.d.calls  # the name's workers may serve A.x: it waits
    r.d.set_unresolved({"tcp://workers.test:5555": "Name or service not known"})
    r.advance(2)
    err = r.outcomes.error(rid)
    assert isinstance(err, NoWorkers)
    assert "tcp://workers.test:5555 has no address yet (Name or service not known)" in str(err)
    assert "zeromesh ping --connect tcp://workers.test:5555,w1" in str(err)
    # Once the name resolved (to peers that said what they serve), UnknownHandler again.
    r.d.set_unresolved({})
    rid = r.submit("A.x")
    assert isinstance(r.outcomes.error(rid), UnknownHandler)


def test_workers_rows_wait_for_a_first_lookup_and_name_what_did_not_resolve() -> None:
    r = Rig("w1")
    r.d.set_unresolved({"tcp://a.test:1": "", "tcp://b.test:1": ""})
    answered: list[bool] = []
    since = r.d.ask_info(lambda: answered.append(True))
    r.take()
    r.clock.advance(0.1)
    r.hello("w1")
    assert answered == []  # a first lookup still runs: its workers may answer too
    late = r.d.add_peer(Peer("tcp://10.0.0.1:1"))
    r.d.set_unresolved({"tcp://b.test:1": "Name or service not known"})
    assert answered == []  # the peer a.test resolved to has not answered yet
    r.d.hello(late, r.d.peers[0].hello)  # type: ignore[arg-type]
    assert answered == [True]
    rows = r.d.info_rows(since)
    assert rows[0] == {
        "endpoint": "tcp://b.test:1",
        "state": "unreachable",
        "unresolved": "Name or service not known",
    }
    assert [row["state"] for row in rows[1:]] == ["ready", "ready"]


def test_a_retiring_peer_that_goes_silent_is_lost_and_its_calls_go_elsewhere() -> None:
    # A frozen worker's connection may never close: heartbeats still cover a retiring
    # peer, so what it holds is re-sent after LIVENESS silent heartbeats, not at the
    # calls' deadlines.
    r = Rig("w1", "w2", prefetch=10)
    r.hello("w1")
    r.take()
    rids = [r.submit() for _ in range(2)]
    assert [ep for ep, _ in sent(r.take())] == ["w1", "w1"]
    r.d.retire_peer(r["w1"])
    r.hello("w2")
    r.take()
    for _ in range(5):
        r.clock.advance(1.0)
        r.hello("w2")  # w2 keeps talking; w1 says nothing
        r.d.tick()
        r.take()
    assert r.d.retried["worker_lost"] == 2
    assert sorted(rid for rid in rids if rid in r["w2"].outstanding) == sorted(rids)
    assert r.d.idle_retired() == [r["w1"]]


def test_a_peer_retired_before_its_hello_does_not_hold_up_unknown_handler() -> None:
    r = Rig("w1", "w2")
    r.hello("w2")  # w1 never says HELLO: its address left DNS first
    r.d.retire_peer(r["w1"])
    rid = r.submit("B.nothing")
    assert isinstance(r.outcomes.error(rid), UnknownHandler)


def test_a_client_takes_hundreds_of_endpoints() -> None:
    # One name may stand for hundreds of workers, and a Client uses three sockets per
    # endpoint: libzmq's default of 1023 sockets per context failed at about 340.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 4000
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"the hard limit on open files ({hard}) is under {need}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))
    endpoints = sorted({f"tcp://127.0.0.1:{free_port()}" for _ in range(420)})[:400]
    with Client(endpoints, timeout=0.2) as c:
        rows = c.workers(timeout=0.2)
    assert sorted(row["endpoint"] for row in rows) == endpoints
