"""What the operations side stores: when each background process last showed it was alive, and
which beat holds the leader lease. Times are the database's clock (wall time, never the business
clock a demo may run fast), so machines with skewed clocks still agree."""

from __future__ import annotations

from django.db import models


class Heartbeat(models.Model):
    """One row per thing that must keep beating: a worker (`worker:<hostname>`), the sweeper
    (`sweeper`), and the beat leader lease (`beat-leader`, whose `holder` is the leading beat and
    `expires_at` the moment a standby may take over)."""

    name = models.CharField(max_length=200, primary_key=True)
    holder = models.CharField(max_length=200, blank=True)
    seen_at = models.DateTimeField()
    expires_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} seen {self.seen_at}"
