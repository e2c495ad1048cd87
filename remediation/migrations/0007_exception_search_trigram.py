from django.db import migrations

# The inbox's search ("opportunity, P-…, SO-…, I-…, customer") is a substring match on the
# exceptions' lower-cased search text (LIKE '%…%'), which no B-tree can serve: at 1M handoffs each
# search read all 50,000 open exceptions' text, twice per page (the aggregate and the customers),
# about 100 ms each. A trigram index answers it in a few ms (bench/inbox, issue 16). PostgreSQL
# only: pg_trgm is a trusted extension (PostgreSQL 13+), so the database owner may create it; the
# embedded SQLite set-up keeps its plain scan.
CREATE = [
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    "CREATE INDEX IF NOT EXISTS exc_search_trgm ON remediation_handoffexception USING gin (search_text gin_trgm_ops)",
]
DROP = ["DROP INDEX IF EXISTS exc_search_trgm"]


def _run(statements):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor != "postgresql":
            return
        for sql in statements:
            schema_editor.execute(sql)

    return run


class Migration(migrations.Migration):
    dependencies = [("remediation", "0006_inbox_covering_index")]

    operations = [migrations.RunPython(_run(CREATE), _run(DROP))]
