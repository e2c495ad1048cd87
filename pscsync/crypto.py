"""Authenticated encryption of connector credentials, bound to the row that holds them.

AES-256-GCM with the row's identity as associated data: a ciphertext copied onto another
connection does not decrypt. Each ciphertext carries the id of the key that made it, so keys can
be rotated (encrypt with the first key in PSCSYNC_CREDENTIALS_KEYS, decrypt with any listed).
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


class CredentialsUnreadable(Exception):
    """The stored credentials cannot be decrypted: wrong key, moved ciphertext or tampering."""


@dataclass(frozen=True)
class Sealed:
    key_id: str
    blob: bytes


def _keys() -> list[tuple[str, bytes]]:
    keys = []
    for item in settings.CREDENTIALS_KEYS.split(","):
        key_id, _, encoded = item.strip().partition(":")
        try:
            raw = base64.urlsafe_b64decode(encoded)
        except ValueError:
            raw = b""
        if not key_id or len(raw) != 32:
            raise ImproperlyConfigured("PSCSYNC_CREDENTIALS_KEYS entries must be '<id>:<32 bytes, urlsafe base64>'")
        keys.append((key_id, raw))
    return keys


def current_key_id() -> str:
    """The key new ciphertexts are sealed with (the first listed)."""
    return _keys()[0][0]


def seal(data: dict[str, Any], *, bound_to: str) -> Sealed:
    key_id, key = _keys()[0]
    nonce = os.urandom(12)
    plaintext = json.dumps(data, sort_keys=True).encode()
    return Sealed(key_id=key_id, blob=nonce + AESGCM(key).encrypt(nonce, plaintext, bound_to.encode()))


def unseal(sealed: Sealed, *, bound_to: str) -> dict[str, Any]:
    keys = dict(_keys())
    key = keys.get(sealed.key_id)
    if key is None:
        raise CredentialsUnreadable(f"credentials were sealed with key {sealed.key_id!r}, which is not configured")
    nonce, ciphertext = sealed.blob[:12], sealed.blob[12:]
    try:
        plaintext = AESGCM(key).decrypt(nonce, ciphertext, bound_to.encode())
    except InvalidTag:
        raise CredentialsUnreadable("credentials do not belong to this connection or were altered") from None
    return json.loads(plaintext)


def new_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


if __name__ == "__main__":
    print(f"k1:{new_key()}")
