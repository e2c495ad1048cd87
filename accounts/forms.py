"""The admin's user form: name, e-mail, role, legal entities, active, an optional password."""

from __future__ import annotations

from typing import Any, cast

from django import forms

from accounts.models import IdentityGroupRule
from pscsync.access import ROLES
from pscsync.models import LegalEntity


class UserAdminForm(forms.Form):
    username = forms.RegexField(
        regex=r"^[\w.@+-]+$",
        max_length=150,
        label="User name",
        help_text="Letters, digits and . @ + - _ only. Cannot change later.",
    )
    email = forms.EmailField(required=False, label="E-mail")
    role = forms.ChoiceField(
        choices=[(r, r.capitalize()) for r in ROLES],
        help_text="Viewer reads; operator also works exceptions; admin also configures and manages users.",
    )
    all_entities = forms.BooleanField(required=False, label="Every legal entity (now and future ones)")
    legal_entities = forms.ModelMultipleChoiceField(
        queryset=LegalEntity.objects.none(), required=False, widget=forms.CheckboxSelectMultiple
    )
    is_active = forms.BooleanField(required=False, initial=True, label="Active (may sign in)")
    password = forms.CharField(
        required=False,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        label="Password",
        help_text="Optional. Leave blank for single sign-on users, or to keep the current one; "
        "the person can change it on their Password page.",
    )

    def __init__(self, *args: Any, entities: Any, editing: bool, may_grant_all: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.ModelMultipleChoiceField, self.fields["legal_entities"]).queryset = entities
        if editing:
            self.fields["username"].disabled = True
        if not may_grant_all:
            del self.fields["all_entities"]


class IdentityGroupRuleForm(forms.ModelForm):
    class Meta:
        model = IdentityGroupRule
        fields = ["group", "role", "all_entities", "legal_entities"]
        widgets = {"legal_entities": forms.CheckboxSelectMultiple}
        labels = {"group": "Identity-provider group", "all_entities": "Every legal entity"}

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if not data.get("all_entities") and not data.get("legal_entities"):
            raise forms.ValidationError("Choose at least one legal entity, or every legal entity.")
        return data
