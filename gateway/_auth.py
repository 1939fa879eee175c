"""`TokenFile`: the bearer tokens a gateway admits, read from ``--token-file``.

The file holds one ``name:token`` per line; blank lines and ``#`` comments are
ignored. The name is who the token belongs to: it is logged with each job created and
owns that job; the token itself is never logged.
"""

from __future__ import annotations

import hmac
from pathlib import Path

__all__ = ["TokenFile", "parse_tokens"]


def parse_tokens(text: str, source: str = "token file") -> dict[str, bytes]:
    """``{name: token}`` from the text of a token file.

    Raises:
        ValueError: a line is not ``name:token`` (the message names the line), or a
            name appears twice.
    """
    tokens: dict[str, bytes] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, token = line.partition(":")
        name, token = name.strip(), token.strip()
        if not colon or not name or not token or any(c.isspace() for c in token):
            raise ValueError(
                f"{source} line {number}: expected name:token (a name, a colon, a token "
                "without spaces)"
            )
        if name in tokens:
            raise ValueError(f"{source} line {number}: name {name!r} appears twice")
        tokens[name] = token.encode()
    return tokens


class TokenFile:
    """The tokens of one file; `reload` re-reads it (SIGHUP).

    Raises:
        OSError: on creation, the file cannot be read.
        ValueError: on creation, a malformed line (see `parse_tokens`).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._tokens: dict[str, bytes] = {}
        self.reload()

    def __len__(self) -> int:
        return len(self._tokens)

    def reload(self) -> int:
        """Re-read the file; return how many tokens it holds. On an error the old
        tokens stay.

        Raises:
            OSError, ValueError: as on creation.
        """
        text = Path(self.path).read_text(encoding="utf-8")
        self._tokens = parse_tokens(text, self.path)
        return len(self._tokens)

    def name_of(self, authorization: str | None) -> str | None:
        """The name whose token an ``Authorization: Bearer <token>`` header carries, or
        None. Compares in constant time against every configured token, so the time
        taken says nothing about which token (or how much of one) matched."""
        if not authorization:
            return None
        scheme, _, credential = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        given = credential.strip().encode("utf-8", "replace")
        found = None
        for name, token in self._tokens.items():
            if hmac.compare_digest(given, token):
                found = name
        return found
