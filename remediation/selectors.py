"""The workbench's reads: handoffs that need a person, grouped by cause."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

from pscsync.models import Handoff
from pscsync.selectors import handoffs_visible_to

# Variable parts: long hex ids, numbers of 5+ digits, amounts with decimals, keys like OPP-1042,
# quoted values. Short numbers stay: "(422)" or "step 3" say something about the cause.
_VARIABLE = re.compile(r"\b[0-9a-f]{8,}\b|\b[A-Z]{2,}-[\w-]+|\d{5,}|\d+\.\d+|'[^']*'|\"[^\"]*\"")


def cause_signature(message: str) -> str:
    """The message with its variable parts (numbers, ids, quoted values) blanked: same cause, same text."""
    return _VARIABLE.sub("…", message)[:200]


@dataclass
class CauseGroup:
    flow: str
    error_class: str
    signature: str
    handoffs: list[Handoff] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.handoffs)

    @property
    def first_seen(self):  # noqa: ANN201
        return min(h.created_at for h in self.handoffs)

    @property
    def last_seen(self):  # noqa: ANN201
        return max(h.created_at for h in self.handoffs)

    @property
    def legal_entities(self) -> list[str]:
        return sorted({h.legal_entity.name for h in self.handoffs if h.legal_entity})


def exception_groups(user: AbstractBaseUser | AnonymousUser) -> list[CauseGroup]:
    groups: dict[tuple[str, str, str], CauseGroup] = {}
    for handoff in handoffs_visible_to(user).filter(status=Handoff.Status.NEEDS_ATTENTION).order_by("created_at"):
        key = (handoff.flow, handoff.last_error_class, cause_signature(handoff.last_error_message))
        groups.setdefault(key, CauseGroup(*key)).handoffs.append(handoff)
    return sorted(groups.values(), key=lambda g: (-g.count, g.first_seen))
