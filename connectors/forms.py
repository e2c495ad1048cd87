"""The admin's connection form. Credentials are write-only: never rendered, blank keeps them."""

from __future__ import annotations

import json
from typing import Any, cast

from django import forms

from connectors.egress import DestinationRefused, check_destination
from connectors.models import Connection
from pscsync.models import LegalEntity


class ConnectionForm(forms.Form):
    name = forms.CharField(max_length=120)
    slug = forms.SlugField(
        max_length=50, help_text="Part of the webhook address: /webhooks/<slug>/. Cannot change later."
    )
    kind = forms.ChoiceField(choices=Connection.Kind.choices)
    vendor = forms.ChoiceField(choices=Connection.Vendor.choices)
    base_url = forms.URLField(max_length=400, label="Base URL", assume_scheme="https")
    api_version = forms.CharField(max_length=20, required=False, label="API version")
    intake = forms.ChoiceField(choices=Connection.Intake.choices, label="Changes arrive by")
    rate_limit_per_minute = forms.IntegerField(min_value=1, max_value=100_000, initial=600)
    legal_entities = forms.ModelMultipleChoiceField(
        queryset=LegalEntity.objects.none(), widget=forms.CheckboxSelectMultiple, label="Legal entities served"
    )
    is_sandbox = forms.BooleanField(required=False, label="Points at a pscsync sandbox (may use loopback)")
    is_active = forms.BooleanField(required=False, initial=True, label="Active")
    credentials = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 5, "autocomplete": "off", "spellcheck": "false"}),
        help_text='JSON, e.g. {"client_id": "…", "client_secret": "…"}. Leave blank to keep what is stored.',
    )

    def __init__(self, *args: Any, entities: Any, editing: Connection | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.editing = editing
        cast(forms.ModelMultipleChoiceField, self.fields["legal_entities"]).queryset = entities
        if editing is not None:
            self.fields["slug"].disabled = True
        else:
            self.fields["credentials"].required = True
            self.fields["credentials"].help_text = 'JSON, e.g. {"client_id": "…", "client_secret": "…"}.'

    def clean_slug(self) -> str:
        slug = self.cleaned_data["slug"]
        if self.editing is None and Connection.objects.filter(slug=slug).exists():
            raise forms.ValidationError("Another connection already uses this name in its webhook address.")
        return slug

    def clean_credentials(self) -> dict[str, Any] | None:
        raw = self.cleaned_data["credentials"].strip()
        if not raw:
            return None
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise forms.ValidationError(f"Credentials must be JSON: {exc}") from None
        if not isinstance(value, dict) or not value:
            raise forms.ValidationError("Credentials must be a JSON object with at least one entry.")
        return value

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        url, vendor = data.get("base_url"), data.get("vendor")
        if url and vendor:
            try:
                check_destination(url, vendor=vendor, is_sandbox=bool(data.get("is_sandbox")))
            except DestinationRefused as exc:
                self.add_error("base_url", exc.message)
        return data
