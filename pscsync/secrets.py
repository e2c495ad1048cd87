"""Masking of secrets in anything we show: request and response bodies, headers."""

from __future__ import annotations

from typing import Any

SECRET_WORDS = ("authorization", "password", "secret", "token", "api_key", "apikey", "client_secret", "signature")
MASK = "••••••"


def mask_secrets(value: Any) -> Any:
    """A copy of `value` with every field whose name suggests a secret replaced by a mask."""
    if isinstance(value, dict):
        return {
            k: MASK if any(word in str(k).lower() for word in SECRET_WORDS) else mask_secrets(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [mask_secrets(v) for v in value]
    return value
