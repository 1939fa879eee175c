"""The body codecs a header can name (its codec byte)."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["Codec"]


class Codec(IntEnum):
    """The body codec named in every header."""

    MSGPACK = 0
    JSON = 1
