"""Links with delay and loss between network namespaces, emulated in user space over TUN.

``tc netem`` is the usual tool, but its kernel module is not built into every kernel
(this machine's has no ``sch_netem``). This does the same job one level up: every
namespace gets a TUN interface on one /24, and this process, holding all of them,
moves each IP packet to the interface of its destination after the delay of that
host's link, or drops it with the link's loss probability. TCP above it sees real
delay, real loss (and retransmits), and a real blackout (loss 1).

Run as ``python linkemu.py SPEC`` (root), SPEC a JSON list of
``[namespace, interface, address]``; it prints ``ready`` once every interface is up,
then takes one JSON command per line on stdin and answers ``ok``:

* ``{"host": ADDRESS, "delay": S, "loss": P}``: the link between ADDRESS and the switch
  (a star: a packet crosses its sender's link, then its receiver's) delays every
  packet S seconds, each way, and drops it with probability P.

It exits when stdin closes; its TUN interfaces go with it.
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import json
import os
import random
import select
import struct
import subprocess
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
_NONE = [0.0, 0.0]


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


def main() -> None:
    spec = json.loads(sys.argv[1])
    by_address: dict[bytes, int] = {}  # destination (4 bytes) -> the TUN fd it lives behind
    link: dict[bytes, list[float]] = {}  # host address -> [delay, loss]
    fds = []
    for ns, dev, address in spec:
        fd = open_tun(dev)
        ip("link", "set", dev, "netns", ns)
        ip("-n", ns, "addr", "add", f"{address}/24", "dev", dev)
        ip("-n", ns, "link", "set", dev, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        key = bytes(int(part) for part in address.split("."))
        by_address[key] = fd
        link[key] = [0.0, 0.0]
        fds.append(fd)
    print("ready", flush=True)
    stdin = sys.stdin.fileno()
    queue: list[tuple[float, int, int, bytes]] = []  # release time, seq, fd, packet
    seq = 0
    rand = random.random
    while True:
        timeout = max(0.0, queue[0][0] - time.monotonic()) if queue else None
        readable, _, _ = select.select([stdin, *fds], [], [], timeout)
        now = time.monotonic()
        for fd in readable:
            if fd == stdin:
                line = sys.stdin.readline()
                if not line:
                    return
                cmd = json.loads(line)
                key = bytes(int(part) for part in cmd["host"].split("."))
                link[key] = [float(cmd.get("delay", 0.0)), float(cmd.get("loss", 0.0))]
                print("ok", flush=True)
                continue
            while True:
                try:
                    packet = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if len(packet) < 20 or packet[0] >> 4 != 4:
                    continue  # IPv4 only
                src, dst = packet[12:16], packet[16:20]
                out = by_address.get(dst)
                if out is None:
                    continue
                # A star: each interface's link to the switch, then the other's.
                out_link, in_link = link.get(src, _NONE), link[dst]
                if (out_link[1] and rand() < out_link[1]) or (in_link[1] and rand() < in_link[1]):
                    continue
                seq += 1
                heapq.heappush(queue, (now + out_link[0] + in_link[0], seq, out, packet))
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, out, packet = heapq.heappop(queue)
            with contextlib.suppress(OSError):  # a full or gone interface: lost, as on a wire
                os.write(out, packet)


if __name__ == "__main__":
    main()
