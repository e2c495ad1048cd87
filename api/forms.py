"""The form of the token page."""

from __future__ import annotations

from django import forms
from django.conf import settings


class ApiTokenForm(forms.Form):
    name = forms.CharField(max_length=80, help_text="What uses it, e.g. “ServiceNow sync”.")
    days = forms.TypedChoiceField(
        coerce=int, label="Expires after", choices=[(30, "30 days"), (90, "90 days"), (365, "1 year")], initial=90
    )

    def clean_days(self) -> int:
        days = self.cleaned_data["days"]
        if days > settings.API_TOKEN_MAX_DAYS:
            raise forms.ValidationError(f"Tokens may live at most {settings.API_TOKEN_MAX_DAYS} days here.")
        return days
