"""Password rules beyond Django's own validators (settings.AUTH_PASSWORD_VALIDATORS)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError


class VarietyValidator:
    """Refuse passwords made of a few characters repeated (`aaaaaaaaaaaa`, `abababababab`): long
    enough for the length rule, guessed in the first seconds of any attack."""

    def __init__(self, min_distinct: int = 6) -> None:
        self.min_distinct = min_distinct

    def validate(self, password: str, user: Any = None) -> None:
        if len(set(password.lower())) < self.min_distinct:
            raise ValidationError(
                f"This password repeats too few characters: use at least {self.min_distinct} different ones.",
                code="password_too_repetitive",
            )

    def get_help_text(self) -> str:
        return f"Your password must use at least {self.min_distinct} different characters."
