"""The raw-pyzmq baseline: a minimal hand-written DEALER→ROUTER echo.

The server decodes each small msgpack request and encodes a reply, as any real
Python worker must; large frames are echoed back untouched with ``copy=False``.
Run as ``python -m zeromesh._bench.raw ENDPOINT`` (the bench starts it as a child process).
"""

from __future__ import annotations

import sys
import time

import msgpack
import numpy as np
import zmq

WINDOW = 1000


def serve(endpoint: str) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.bind(endpoint)
    while True:
        frames = sock.recv_multipart(copy=False)
        ident, body = frames[0], frames[1]
        if len(frames) > 2:  # a big buffer: echo it back without a copy
            sock.send_multipart([ident, body, frames[2]], copy=False)
            continue
        rid, _target, args = msgpack.unpackb(body.buffer)
        sock.send_multipart([ident, msgpack.packb([rid, args[0]])])


def serve_protocol(endpoint: str) -> None:
    """The same blocking echo, speaking zeromesh's wire protocol (header + body frames).

    Not a baseline for a target: it shows what the wire format itself costs over the
    one-frame baseline, with no worker or client machinery at all.
    """
    import protocol
    from protocol import Reply, Request

    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    while True:
        frames = sock.recv_multipart(copy=False)
        msg = protocol.decode(frames[1:])
        if type(msg) is not Request:
            continue  # only requests are sent here; a real server would answer an Error
        sock.send_multipart([frames[0], *protocol.encode(Reply(msg.id, msg.args[0]))])


class ProtocolClient:
    """A bare DEALER sending zeromesh requests: the client half of `serve_protocol`."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def rtts(self, n: int) -> list[float]:
        import protocol
        from protocol import Request

        send, recv = self.sock.send_multipart, self.sock.recv_multipart
        out = []
        for i in range(n):
            t = time.perf_counter()
            send(protocol.encode(Request(i + 1, "bench.echo", [i])))
            protocol.decode(recv(copy=False))
            out.append(time.perf_counter() - t)
        return out

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


class RawClient:
    """The baseline's client side: a DEALER, msgpack, nothing else."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.connect(endpoint)

    def call(self, rid: int, value: object) -> object:
        self.sock.send(msgpack.packb([rid, "bench.echo", [value]]))
        return msgpack.unpackb(self.sock.recv())[1]

    def rtts(self, n: int) -> list[float]:
        out = []
        for i in range(n):
            t = time.perf_counter()
            self.call(i, i)
            out.append(time.perf_counter() - t)
        return out

    def pipelined(self, n: int) -> float:
        """Calls/s with up to `WINDOW` requests in flight."""
        send, recv = self.sock.send, self.sock.recv
        sent = done = 0
        start = time.perf_counter()
        while done < n:
            while sent < n and sent - done < WINDOW:
                send(msgpack.packb([sent, "bench.echo", [sent]]))
                sent += 1
            msgpack.unpackb(recv())
            done += 1
        return n / (time.perf_counter() - start)

    def array_round_trip(self, arr: np.ndarray) -> float:
        """Seconds to send ``arr`` (zero-copy) and get it back."""
        start = time.perf_counter()
        self.sock.send_multipart([b"array", arr.data], copy=False)
        frames = self.sock.recv_multipart(copy=False)
        back = np.frombuffer(frames[1].buffer, dtype=arr.dtype)
        elapsed = time.perf_counter() - start
        assert back.nbytes == arr.nbytes
        return elapsed

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


if __name__ == "__main__":
    if sys.argv[2:] == ["--protocol"]:
        serve_protocol(sys.argv[1])
    else:
        serve(sys.argv[1])
