"""Size limits a decoder enforces before it allocates anything a peer asked for."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BUNDLE_BYTES", "Limits"]

_MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """What a peer may send us. Everything past a limit is a `ProtocolError`.

    The defaults let a 1 GiB numpy array through (as out-of-band frames) while a
    small, hostile body cannot make the decoder build a huge list or nest deep
    enough to exhaust the stack. Raise them per process if your data needs it.

    Attributes:
        max_frames: frames in one message, after the routing envelope (header, body
            and out-of-band frames together).
        max_header_bytes: size of the header frame.
        max_body_bytes: size of the body frame (msgpack or JSON).
        max_message_bytes: all frames of one message together; also the per-frame
            ``ZMQ_MAXMSGSIZE`` the socket shells set, so libzmq drops a larger frame
            before Python sees it.
        max_depth: nesting of lists/maps in a body.
        max_str_len: one string in a body, in bytes.
        max_bin_len: one inline binary value in a body, in bytes.
        max_array_len: items in one list.
        max_map_len: pairs in one map.
        max_ndim: dimensions of one numpy array.
    """

    max_frames: int = 1026
    max_header_bytes: int = 20 + 255
    max_body_bytes: int = 64 * _MiB
    max_message_bytes: int = 1024 * _MiB
    max_depth: int = 32
    max_str_len: int = 64 * _MiB
    max_bin_len: int = 64 * _MiB
    max_array_len: int = 4 * _MiB
    max_map_len: int = 1 * _MiB
    max_ndim: int = 32

    def __post_init__(self) -> None:
        for name in self.__slots__:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Limits.{name} must be a positive int, got {value!r}")
        if self.max_frames < 2:
            raise ValueError("Limits.max_frames must be at least 2 (header and body)")

    @property
    def largest_frame(self) -> int:
        """The largest single frame a receiver with these limits takes (libzmq's
        ``MAXMSGSIZE``): ``max_message_bytes``, or a whole BUNDLE's body if that is more
        (every receiver takes one up to `BUNDLE_BYTES`, SPEC 7.10)."""
        return max(self.max_message_bytes, BUNDLE_BYTES)


DEFAULT_LIMITS = Limits()

BUNDLE_BYTES = 256 * 1024
"""The most a BUNDLE's body may hold (SPEC 7.10), MessagePack's headers included.
Every receiver takes a BUNDLE up to this size whatever its own limits (a sender cannot
know them; each message inside is checked against them as if it had come alone), and
refuses a larger one. Bundles pay off for small messages (one ZeroMQ send and receive
instead of many); a large one goes alone, so it never waits while a bundle is built."""
