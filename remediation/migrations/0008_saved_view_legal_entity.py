"""Saved inbox views name the legal entity filter as the API always has (`legal_entity`), now that
the workbench and the API share one filter set (remediation.filters): `entity=` becomes
`legal_entity=`. Frozen here: plain query-string handling, no live app code."""

from urllib.parse import parse_qsl, urlencode

from django.db import migrations


def _rename(old, new):
    def run(apps, schema_editor):
        SavedView = apps.get_model("remediation", "SavedView")
        for view in SavedView.objects.all():
            pairs = parse_qsl(view.query, keep_blank_values=True)
            if not any(name == old for name, _ in pairs):
                continue
            view.query = urlencode([(new if name == old else name, value) for name, value in pairs])[:1000]
            view.save(update_fields=["query"])

    return run


class Migration(migrations.Migration):
    dependencies = [("remediation", "0007_exception_search_trigram")]

    operations = [migrations.RunPython(_rename("entity", "legal_entity"), _rename("legal_entity", "entity"))]
