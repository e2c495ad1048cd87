"""The demo firm's mappings, shipped as data (pscsync/flows/mappings/<vendor>.json), published as
version 1 of each (connection, purpose) mapping. Admins change them in the mapping studio."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from connectors.models import Connection
from pscsync.mappings import mapping_publish
from pscsync.models import MappingVersion

MAPPINGS_DIR = Path(__file__).resolve().parent / "mappings"


def shipped_mappings(vendor: str) -> dict[str, dict[str, Any]]:
    path = MAPPINGS_DIR / f"{vendor}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def shipped_mappings_install(connection: Connection) -> list[MappingVersion]:
    """Publish the shipped mappings for a connection's vendor where none is published yet; a
    mapping an admin has published is never overwritten."""
    published = []
    for purpose, spec in shipped_mappings(connection.vendor).items():
        in_force = MappingVersion.objects.filter(
            mapping__connection=connection, mapping__entity=purpose, status=MappingVersion.Status.PUBLISHED
        ).exists()
        if in_force:
            continue
        published.append(
            mapping_publish(
                connection=connection,
                entity=purpose,
                rules=spec["rules"],
                value_maps=spec.get("value_maps", {}),
                comment="Shipped mapping for the demo firm",
                name=f"{connection.name}: {purpose.replace('_', ' ')}",
            )
        )
    return published
