"""The base of the filter sets shared by pages and the API (django-filter, the NetBox way: one
FilterSet per list, used by the page's form and by the API's query string alike)."""

from __future__ import annotations

import django_filters as filters


def _boolean(qs, name: str, value: str):
    return qs.filter(**{name: value == "true"}) if value else qs


def strict_boolean(**kwargs):
    """true or false, and nothing else (a typo is an error, not 'no filter')."""
    return filters.ChoiceFilter(choices=[("true", "true"), ("false", "false")], method=_boolean, **kwargs)


class StrictFilterSet(filters.FilterSet):
    """A typed filter (a choice, a date-time, a number) given with an empty value is an error,
    not "no filter": an integration with a bug in its query string should hear about it.
    Free-text filters may be empty."""

    def is_valid(self) -> bool:
        valid = super().is_valid()
        for name, flt in self.filters.items():
            if isinstance(flt, filters.CharFilter) and not isinstance(flt, filters.ChoiceFilter):
                continue
            if name in self.data and "" in self.data.getlist(name):
                self.form.add_error(name if name in self.form.fields else None, "may not be empty")
                valid = False
        return valid
