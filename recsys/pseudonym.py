"""Keyed pseudonymisation of user ids: HMAC-SHA256 under a secret key that never enters an artifact.

`recsys train --pseudonymise-key FILE` replaces every user id by its pseudonym as the tables
are read, before anything else sees them: the model, the artifact (histories, user features)
and so the feature store only ever hold pseudonyms. Whoever holds the key maps a raw id to
its pseudonym (`Pseudonymiser`, `recsys pseudonym map`); without the key the mapping can be
neither reversed nor recomputed (a dictionary of likely ids does not help, unlike a plain
hash). Clients pseudonymise before they call (`recsys recommend --pseudonymise-key FILE`),
so serving works unchanged.

The artifact records only the key's fingerprint (`key_id`: HMAC of a fixed label, which says
nothing about the key) so a client or operator can check that they hold the key it was
trained with.

Key file: at least 32 bytes of secret, as written by `recsys pseudonym keygen` (64 hex
characters on one line); any file of >= 32 bytes works, its bytes (surrounding whitespace
stripped) are the key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

__all__ = ["MIN_KEY_BYTES", "Pseudonymiser", "read_key", "write_key"]

MIN_KEY_BYTES = 32
_FINGERPRINT_LABEL = b"recsys pseudonym key id v1"


def read_key(path: str | Path) -> bytes:
    """The key in `path`; ValueError when missing, unreadable or shorter than MIN_KEY_BYTES."""
    try:
        raw = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ValueError(f"pseudonymisation key {path}: {exc.strerror or exc}") from None
    if len(raw) < MIN_KEY_BYTES:
        raise ValueError(
            f"pseudonymisation key {path}: {len(raw)} bytes, need at least {MIN_KEY_BYTES} "
            "(make one with `recsys pseudonym keygen --out FILE`)"
        )
    return raw


def write_key(path: str | Path) -> None:
    """A new random key (32 bytes, hex) in `path`, readable by its owner only; refuses to overwrite."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secrets.token_hex(32) + "\n")


class Pseudonymiser:
    """user id -> 64 hex characters, HMAC-SHA256(key, UTF-8 id). Deterministic per key."""

    def __init__(self, key: bytes):
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"pseudonymisation key: {len(key)} bytes, need at least {MIN_KEY_BYTES}")
        self._key = key
        self.key_id = hmac.new(key, _FINGERPRINT_LABEL, hashlib.sha256).hexdigest()[:16]

    @classmethod
    def from_file(cls, path: str | Path) -> Pseudonymiser:
        return cls(read_key(path))

    def __call__(self, user_id: str) -> str:
        return hmac.new(self._key, str(user_id).encode("utf-8"), hashlib.sha256).hexdigest()

    def __repr__(self) -> str:  # never show the key
        return f"Pseudonymiser(key_id={self.key_id})"

    def describe(self) -> dict[str, str]:
        """What the artifact may record: the scheme and the key's fingerprint, not the key."""
        return {"scheme": "hmac-sha256", "key_id": self.key_id}
