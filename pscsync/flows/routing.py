"""Which systems serve a legal entity: one CRM, one PSA and one ERP connection each."""

from __future__ import annotations

from dataclasses import dataclass

from connectors.errors import MappingError
from connectors.models import Connection
from pscsync.models import LegalEntity


@dataclass(frozen=True)
class Systems:
    entity: LegalEntity
    crm: Connection
    psa: Connection
    erp: Connection

    def of(self, kind: str) -> Connection:
        return {"crm": self.crm, "psa": self.psa, "erp": self.erp}[kind]


def legal_entity_get(code: str) -> LegalEntity:
    entity = LegalEntity.objects.filter(code__iexact=(code or "").strip()).first()
    if entity is None:
        known = ", ".join(LegalEntity.objects.order_by("code").values_list("code", flat=True))
        raise MappingError(
            f"legal entity {code!r} is not set up in pscsync (known: {known or 'none'}); "
            "set the opportunity's legal entity or add the entity under Connections",
            fields=("legal_entity",),
        )
    return entity


def systems_for(entity: LegalEntity) -> Systems:
    """The entity's CRM, PSA and ERP. Exactly one active connection of each kind must serve it."""
    found: dict[str, Connection] = {}
    for kind in ("crm", "psa", "erp"):
        candidates = list(
            Connection.objects.filter(kind=kind, legal_entities=entity, is_active=True).order_by("slug")[:2]
        )
        if not candidates:
            raise MappingError(
                f"no {kind.upper()} connection serves legal entity {entity.code} ({entity.name}): "
                "an admin must add the entity to one under Connections",
                fields=("legal_entity",),
            )
        if len(candidates) > 1:
            raise MappingError(
                f"legal entity {entity.code} is served by more than one {kind.upper()} connection "
                f"({candidates[0].slug}, {candidates[1].slug}): keep one, so records go to one place",
                fields=("legal_entity",),
            )
        found[kind] = candidates[0]
    return Systems(entity=entity, **found)
