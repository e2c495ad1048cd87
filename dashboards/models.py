"""Dashboard records: SLAs per flow, FX rates for the reporting currency, and the aggregates
kept as data arrives (facts per business item, daily and hourly rollups) so pages stay fast."""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import F, Value
from django.db.models.functions import Coalesce


class FlowSla(models.Model):
    """An admin's targets for one flow: its business cycle (the measure is in dashboards.facts,
    the rule with its business calendars in dashboards.sla) and its sync latency."""

    class Unit(models.TextChoices):
        HOURS = "hours", "Calendar hours"
        BUSINESS_DAYS = "business_days", "Business days (the entity's working days)"

    flow = models.CharField(max_length=40, unique=True)
    target = models.DecimalField(max_digits=8, decimal_places=2, help_text="e.g. 1 business day, or 120 hours.")
    unit = models.CharField(max_length=16, choices=Unit.choices, default=Unit.HOURS)
    sync_target_minutes = models.PositiveIntegerField(
        default=15, help_text="The integration's own SLA: source change → every target updated, in minutes."
    )
    note = models.CharField(max_length=200, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["flow"]
        verbose_name = "flow SLA"

    def __str__(self) -> str:
        return f"{self.flow} within {self.target} {self.get_unit_display().lower()}"

    @property
    def target_label(self) -> str:
        n = f"{self.target.normalize():f}"
        if self.unit == "business_days":
            return f"{n} business day{'s' if self.target != 1 else ''}"
        if self.target >= 72 and self.target % 24 == 0:
            return f"{(self.target / 24).normalize():f} days"
        return f"{n} h"

    @property
    def sync_label(self) -> str:
        minutes = self.sync_target_minutes
        return f"{minutes // 60} h" if minutes >= 120 and minutes % 60 == 0 else f"{minutes} min"


class ExchangeRate(models.Model):
    """One rate as an ERP keeps it, read by dashboards.fx: 1 `from_currency` = `rate` `to_currency`.
    Daily rates take effect on `effective_date`; an ERP's own period rates (NetSuite's consolidated
    average and current rates) carry the period's first day."""

    class RateType(models.TextChoices):
        DAILY = "daily", "Daily"
        AVERAGE = "average", "Period average"
        CLOSING = "closing", "Period end"

    connection = models.ForeignKey("connectors.Connection", on_delete=models.CASCADE, related_name="+")
    from_currency = models.CharField(max_length=3)
    to_currency = models.CharField(max_length=3)
    rate_type = models.CharField(max_length=8, choices=RateType.choices)
    effective_date = models.DateField()
    rate = models.DecimalField(max_digits=18, decimal_places=8)
    read_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["connection", "from_currency", "to_currency", "rate_type", "effective_date"],
                name="exchange_rate_one_per_day",
            )
        ]
        indexes = [models.Index(fields=["from_currency", "to_currency", "effective_date"], name="exchange_rate_pair")]

    def __str__(self) -> str:
        return f"{self.from_currency}/{self.to_currency} {self.effective_date} {self.rate}"


class FxRate(models.Model):
    """Units of `to_currency` per one unit of `currency`, for a month: what figures convert with.

    Policy (docs/dashboards.md, DOMAIN.md §1.11): flows (billings, payments, exception value) use
    the month's average rate; balances (AR, blocked value, money at risk) the closing rate of the
    period's last month. Filled from the ERPs' rates (dashboards.fx); `rate` is the admin's
    override when there is one, else the ERP's. A missing month falls back to the latest earlier
    month of the same kind."""

    class Kind(models.TextChoices):
        AVERAGE = "average", "Period average"
        CLOSING = "closing", "Period end"

    class Source(models.TextChoices):
        ERP = "erp", "The ERP's period rate"
        DERIVED = "derived", "Derived from the ERP's daily rates"
        MANUAL = "manual", "Entered by an admin"

    currency = models.CharField(max_length=3)
    to_currency = models.CharField(max_length=3, default="USD")
    month = models.CharField(max_length=7, help_text="YYYY-MM")
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.AVERAGE)
    rate = models.DecimalField(max_digits=18, decimal_places=8, help_text="The rate in use: override, else ERP.")
    source = models.CharField(max_length=8, choices=Source.choices, default=Source.MANUAL)
    connection = models.ForeignKey(
        "connectors.Connection", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    read_at = models.DateTimeField(null=True, blank=True)
    erp_rate = models.DecimalField(max_digits=18, decimal_places=8, null=True, blank=True)
    override_rate = models.DecimalField(max_digits=18, decimal_places=8, null=True, blank=True)
    overridden_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    overridden_at = models.DateTimeField(null=True, blank=True)
    override_reason = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["currency", "to_currency", "-month", "kind"]
        constraints = [
            models.UniqueConstraint(fields=["currency", "to_currency", "month", "kind"], name="fx_one_rate_per_month")
        ]

    def __str__(self) -> str:
        return f"{self.currency}/{self.to_currency} {self.month} {self.kind} {self.rate}"

    @property
    def overridden(self) -> bool:
        return self.override_rate is not None


class FlowFact(models.Model):
    """One business item of one flow (a deal, a billing batch, an invoice) with its measured
    latency, rebuilt from its handoffs whenever one of them finishes. Grain per flow:
    quote-to-project, contract-change and pipeline-to-demand: the opportunity; project-to-bill:
    the billing batch; bill-to-cash: the invoice."""

    flow = models.CharField(max_length=40)
    key = models.CharField(max_length=200)
    legal_entity = models.ForeignKey(
        "pscsync.LegalEntity", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    service_line = models.CharField(max_length=80, blank=True)
    customer_name = models.CharField(max_length=200, blank=True)
    connection = models.ForeignKey(
        "connectors.Connection", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    currency = models.CharField(max_length=3, blank=True)
    amount = models.DecimalField(max_digits=16, decimal_places=2, default=Decimal("0"))
    start_at = models.DateTimeField(null=True, blank=True)
    end_at = models.DateTimeField(null=True, blank=True, help_text="Empty: not finished yet (censored).")
    start_day = models.DateField(null=True, blank=True)
    end_day = models.DateField(null=True, blank=True)
    measured_day = models.DateField(null=True, blank=True, help_text="When the SLA measure completed.")
    latency_hours = models.FloatField(null=True, blank=True, help_text="The flow's SLA measure.")
    latency_business_days = models.FloatField(null=True, blank=True)
    extra_hours = models.FloatField(null=True, blank=True, help_text="The flow's second measure, e.g. days to pay.")
    within_sla = models.BooleanField(null=True)
    sync_minutes = models.FloatField(
        null=True, blank=True, help_text="Sync latency of its last finished handoff: source change → targets updated."
    )
    sync_within_sla = models.BooleanField(null=True)
    sync_day = models.DateField(null=True, blank=True, help_text="When its last handoff updated every target.")
    exception = models.BooleanField(default=False, help_text="Needed a person or was rejected at least once.")
    handoff = models.ForeignKey("pscsync.Handoff", null=True, on_delete=models.SET_NULL, related_name="+")
    handoff_count = models.PositiveIntegerField(default=1)
    status = models.CharField(max_length=16, blank=True)
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["flow", "key"], name="fact_one_per_item")]
        indexes = [
            models.Index(fields=["flow", "end_day"], name="fact_flow_end"),
            models.Index(fields=["flow", "start_day"], name="fact_flow_start"),
            models.Index(fields=["flow", "measured_day"], name="fact_flow_measured"),
            models.Index(fields=["flow", "sync_day"], name="fact_flow_synced"),
            models.Index(fields=["customer_name"], name="fact_customer"),
        ]

    def __str__(self) -> str:
        return f"{self.flow} {self.key}"


class RollupMeasures(models.Model):
    """What a daily rollup counts for its day, flow, legal entity and currency."""

    day = models.DateField()
    flow = models.CharField(max_length=40)
    legal_entity_id = models.BigIntegerField(null=True)
    currency = models.CharField(max_length=3, blank=True)
    started = models.PositiveIntegerField(default=0)
    started_amount = models.DecimalField(max_digits=18, decimal_places=2, default=Decimal("0"))
    finished = models.PositiveIntegerField(default=0)
    finished_amount = models.DecimalField(max_digits=18, decimal_places=2, default=Decimal("0"))
    measured = models.PositiveIntegerField(default=0, help_text="Finished items with a latency (not negative).")
    negative = models.PositiveIntegerField(
        default=0, help_text="Finished before they started (e.g. project before close)."
    )
    within_sla = models.PositiveIntegerField(default=0)
    exceptions = models.PositiveIntegerField(default=0)
    exception_amount = models.DecimalField(max_digits=18, decimal_places=2, default=Decimal("0"))
    hist = models.JSONField(default=dict, help_text="Latency histogram: bucket upper edge (h) -> count.")
    extra_hist = models.JSONField(default=dict)
    synced = models.PositiveIntegerField(default=0, help_text="Items whose last handoff updated every target.")
    sync_within_sla = models.PositiveIntegerField(default=0)
    sync_hist = models.JSONField(default=dict, help_text="Sync latency histogram: bucket upper edge (min) -> count.")

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self.flow} {self.day}"


def _group_key(*names: str) -> list[F | Coalesce]:
    """A rollup's group as a unique key: nullable ids count as 0, because NULLs are never equal and
    the incremental upserts (dashboards.facts.rollup_add) need one row per group to add to."""
    nullable = {"legal_entity_id", "connection_id"}
    return [Coalesce(name, Value(0)) if name in nullable else F(name) for name in names]


# dashboards.facts.rollup_add names these keys in its ON CONFLICT clauses.
DAILY_ROLLUP_KEY = ("day", "flow", "legal_entity_id", "service_line", "connection_id", "currency")
ENTITY_ROLLUP_KEY = ("day", "flow", "legal_entity_id", "currency")
ATTEMPT_ROLLUP_KEY = ("hour", "flow", "step", "connection_id", "legal_entity_id")


class DailyRollup(RollupMeasures):
    """Per day and dimension: items started and finished, their value, the latency histogram.
    Kept incrementally: each fact's change adds its own delta (dashboards.facts.fact_refresh);
    `rollup_rebuild` recomputes a (flow, day) from FlowFact as the repair and reference path."""

    service_line = models.CharField(max_length=80, blank=True)
    connection_id = models.BigIntegerField(null=True)

    class Meta:
        indexes = [models.Index(fields=["flow", "day"], name="rollup_flow_day")]
        constraints = [models.UniqueConstraint(*_group_key(*DAILY_ROLLUP_KEY), name="rollup_one_row_per_group")]


class EntityDailyRollup(RollupMeasures):
    """DailyRollup summed over service lines and connections, kept with it: what a page without
    a service-line or connection filter reads (the overview at 1M handoffs: a sixth of the rows)."""

    class Meta:
        indexes = [models.Index(fields=["flow", "day"], name="entity_rollup_flow_day")]
        constraints = [models.UniqueConstraint(*_group_key(*ENTITY_ROLLUP_KEY), name="entity_rollup_one_row_per_group")]


class AttemptRollup(models.Model):
    """Per hour, connection and step: attempts, failures, rate limits, duration histogram."""

    hour = models.DateTimeField()
    flow = models.CharField(max_length=40)
    step = models.CharField(max_length=60)
    connection_id = models.BigIntegerField(null=True)
    legal_entity_id = models.BigIntegerField(null=True)
    attempts = models.PositiveIntegerField(default=0)
    failures = models.PositiveIntegerField(default=0)
    transient = models.PositiveIntegerField(default=0)
    rate_limited = models.PositiveIntegerField(default=0)
    retry_after_seconds = models.PositiveBigIntegerField(default=0)
    duration_hist = models.JSONField(default=dict, help_text="Duration histogram: bucket upper edge (ms) -> count.")

    class Meta:
        indexes = [models.Index(fields=["hour"], name="attempt_rollup_hour")]
        constraints = [
            models.UniqueConstraint(*_group_key(*ATTEMPT_ROLLUP_KEY), name="attempt_rollup_one_row_per_group")
        ]

    def __str__(self) -> str:
        return f"{self.flow}/{self.step} {self.hour:%Y-%m-%d %H}h"


class RollupMark(models.Model):
    """How far a handoff's attempts are counted in AttemptRollup (so nothing is counted twice)."""

    handoff = models.OneToOneField("pscsync.Handoff", on_delete=models.CASCADE, related_name="+")
    attempts_through = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"handoff {self.handoff_id} attempts through {self.attempts_through}"


class BacklogGroupFields(models.Model):
    """What makes a group of the open backlog. Ids are 0 and texts empty where the handoff has
    none, so groups compare (and a unique constraint holds: NULLs are never equal)."""

    flow = models.CharField(max_length=40)
    needs_person = models.BooleanField()
    legal_entity_id = models.BigIntegerField(default=0)
    service_line = models.CharField(max_length=80, blank=True)
    connection_id = models.BigIntegerField(default=0)
    currency = models.CharField(max_length=3, blank=True)
    aged_day = models.DateField(help_text="Day of the business time the item ages from (release, close, start).")
    started_day = models.DateField(help_text="Day the handoff's business started.")

    class Meta:
        abstract = True


# dashboards.backlog keys its upserts by these.
BACKLOG_GROUP_FIELDS = tuple(f.name for f in BacklogGroupFields._meta.local_fields)


class OpenItem(BacklogGroupFields):
    """One open handoff as the open backlog counts it: the group it adds one to (see
    dashboards.backlog)."""

    handoff = models.OneToOneField(
        "pscsync.Handoff", primary_key=True, on_delete=models.CASCADE, related_name="open_item"
    )
    customer_name = models.CharField(max_length=200, blank=True)
    amount = models.DecimalField(max_digits=16, decimal_places=2, default=Decimal("0"))

    class Meta:
        # Pages list the oldest open items of a flow (won deals, released batches) 200 at a time.
        indexes = [models.Index(fields=["flow", "aged_day"], name="open_item_flow_age")]

    def __str__(self) -> str:
        return f"open {self.flow} handoff {self.handoff_id}"


class OpenBacklog(BacklogGroupFields):
    """Open handoffs counted per flow, dimension, currency and day: what the overview reads for
    won-not-activated, billing released not invoiced and exceptions by age."""

    items = models.IntegerField(default=0)
    amount = models.DecimalField(max_digits=18, decimal_places=2, default=Decimal("0"))

    class Meta:
        constraints = [models.UniqueConstraint(fields=BACKLOG_GROUP_FIELDS, name="backlog_one_row_per_group")]

    def __str__(self) -> str:
        return f"{self.items} open {self.flow} from {self.aged_day}"


class DemandMonth(models.Model):
    """Pipeline-weighted demand hours per role and month (role rows), and how many open deals'
    contracts end in the month, with and without a resource plan (the row with an empty role),
    kept as pipeline facts change (dashboards.demand)."""

    legal_entity_id = models.BigIntegerField(default=0)
    service_line = models.CharField(max_length=80, blank=True)
    connection_id = models.BigIntegerField(default=0)
    role = models.CharField(max_length=120, blank=True)
    month = models.CharField(max_length=7, help_text="YYYY-MM")
    hours = models.FloatField(default=0)
    deals_ending = models.IntegerField(default=0)
    default_plan_ending = models.IntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["legal_entity_id", "service_line", "connection_id", "role", "month"],
                name="demand_one_row_per_group",
            )
        ]

    def __str__(self) -> str:
        return f"{self.role or 'deals'} {self.month}: {self.hours:.0f} h"


class DemandSnapshot(models.Model):
    """The weighted demand forecast as it stood on one day, per legal entity, role and month:
    resource forecast accuracy compares what was forecast N days before a month with the hours
    later assigned and worked (DOMAIN.md §2.8), and the live DemandMonth keeps only the present.
    Written weekly by beat (dashboards.leaders.demand_snapshot_take)."""

    taken_on = models.DateField()
    legal_entity_id = models.BigIntegerField(default=0)
    role = models.CharField(max_length=120)
    month = models.CharField(max_length=7, help_text="YYYY-MM the hours are forecast for.")
    hours = models.FloatField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["taken_on", "legal_entity_id", "role", "month"], name="demand_snapshot_one_row"
            )
        ]
        indexes = [models.Index(fields=["month", "taken_on"], name="demand_snapshot_month")]

    def __str__(self) -> str:
        return f"forecast of {self.taken_on} for {self.role} {self.month}: {self.hours:.0f} h"
