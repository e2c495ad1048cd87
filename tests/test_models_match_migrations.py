"""The migrations describe the models exactly (`makemigrations --check`). Besides keeping a model
change from shipping without its migration, this is what lets the nested SQLite runs
(tests.helpers.pytest_on_sqlite) build their tables from the models instead of migrating."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command


@pytest.mark.django_db  # makemigrations reads which migrations the database has applied
def test_no_model_change_lacks_its_migration() -> None:
    out = io.StringIO()
    try:
        call_command("makemigrations", "--check", "--dry-run", stdout=out, stderr=out)
    except SystemExit as exit_:  # --check exits 1 when a migration would be written
        raise AssertionError(f"models changed without a migration:\n{out.getvalue()}") from exit_
