"""Run a plan against the vendor sandboxes over simulated business time.

Time: business day `d` is `start + d days`. Each day takes at least `day_seconds` of wall time;
at the start of each day the simulator re-anchors pscsync's shared clock file
(`PSCSYNC_CLOCK=file:<path>`, see pscsync/clock.py) at that day, running `86400 / day_seconds`
times faster than wall time, so the engine stamps handoffs in business time. When the plan is
done the clock settles to real time (speed 1) and, with `trickle`, the firm goes on living in
real time.

The simulator only calls vendor APIs (drivers) and pscsync's HTTP interface (operators).
"""

from __future__ import annotations

import datetime as dt
import heapq
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from connectors.canonical import KEYS
from demo.simulation import anomalies
from demo.simulation.drivers import (
    BusinessCentral,
    Driver,
    DynamicsFinance,
    Kantata,
    NetSuite,
    Salesforce,
    VendorError,
    VendorUnavailable,
)
from demo.simulation.operators import Workbench, WorkbenchUnavailable
from demo.simulation.plan import (
    ENTITIES,
    NETSUITE_CURRENCIES,
    Action,
    Options,
    Plan,
    fx_rate,
    record_rng,
    scenario_plan,
)
from pscsync.clock import clock_file_write

log = logging.getLogger("demo.simulation")
KANTATA_USERS = ("43", "44", "42")  # each account's seeded users stand in for its consultants
D365_COMPANY = "demf"  # the German entity's legal entity in Dynamics 365 Finance
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")
MAX_DEFERRALS = 30  # x 12 business hours: a week of time waits up to 15 days for its project
INCIDENT_MIN_WALL_SECONDS = 6.0


class Defer(Exception):  # a signal, not an error
    """Not yet possible (pscsync has not provisioned the project yet): try again later."""

    def __init__(self, reason: str, hours: float = 12.0) -> None:
        super().__init__(reason)
        self.hours = hours


@dataclass
class Settings:
    urls: dict[str, str]
    start: dt.datetime
    day_seconds: float = 2.0
    clock_file: Path | None = None
    web_url: str = ""
    operator: tuple[str, str] | None = None  # (username, password)


@dataclass
class Deal:
    ref: str
    data: dict[str, Any]
    opportunity: str = ""
    won: bool = False
    amount: float = 0.0
    version: int = 1
    contract_start: str = ""
    contract_end: str = ""


@dataclass
class Invoice:
    erp: str
    key: str  # the ERP's external key (I-<event>, I-K<id>)
    record_id: str
    customer: str
    total: float
    date: str
    number: str = ""
    posted: bool = False
    post_on: dt.date | None = None
    payments: list[tuple[dt.date, float]] = field(default_factory=list)
    fx_date: bool = False
    currency: str = ""


class Simulation:
    def __init__(
        self, plan: Plan, settings: Settings, drivers: dict[str, Driver], *, echo: Callable[[str], None] = print
    ):
        self.plan, self.settings, self.echo = plan, settings, echo
        self.options: Options = plan.options
        self.sf: Salesforce = drivers["salesforce"]  # type: ignore[assignment]
        self.kantata: Kantata = drivers["kantata"]  # type: ignore[assignment]
        self.netsuite: NetSuite = drivers["netsuite"]  # type: ignore[assignment]
        self.bc: BusinessCentral = drivers["businesscentral"]  # type: ignore[assignment]
        # The German entity's systems: its own Kantata account and Dynamics 365 Finance.
        self.kantata_de: Kantata | None = drivers.get("kantata-de")  # type: ignore[assignment]
        self.d365: DynamicsFinance | None = drivers.get("dynamicsfinance")  # type: ignore[assignment]
        if any(a.data.get("entity") == "de" for a in plan.actions) and not (self.kantata_de and self.d365):
            raise ValueError("the plan has German deals: the kantata-de and dynamicsfinance sandboxes are needed")
        self.drivers = drivers
        self.people = {p.ref: p for p in plan.people}
        self.accounts: dict[str, dict[str, Any]] = {}
        self.deals: dict[str, Deal] = {}
        self.contacts: dict[str, str] = {}
        self.assignments: dict[tuple[str, str], str] = {}
        self.participations: set[tuple[str, str]] = set()
        self.projects: dict[str, str] = {}  # P-<opp> -> PSA project id
        self.invoices: dict[str, Invoice] = {}
        self.anomalies_by_key: dict[str, dict[str, Any]] = {}  # handoff business key -> what is wrong
        self.operator_queue: dict[int, dt.datetime] = {}  # exception id -> when they get to it
        self.operator_done: set[int] = set()
        self.fixed_accounts: set[str] = set()  # accounts whose deal an operator put right
        self.stats: Counter[str] = Counter()
        self.queue: list[tuple[dt.datetime, int, Action, int]] = []
        self.seq = 0
        self.now = settings.start
        self.clock_origin: tuple[dt.datetime, float, float] | None = None
        self.workbench = (
            Workbench(settings.web_url, *settings.operator) if settings.web_url and settings.operator else None
        )

    # Queue and time ---------------------------------------------------------------------------
    def push(self, at: dt.datetime, action: Action, tries: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (at, self.seq, action, tries))

    def date(self, day: int) -> dt.date:
        return (self.settings.start + dt.timedelta(days=day)).date()

    def business_clock(self) -> dt.datetime:
        if self.clock_origin is None:
            return self.now
        origin, wall, speed = self.clock_origin
        return origin + dt.timedelta(seconds=(time.time() - wall) * speed)

    def steer_clock(self, at: dt.datetime, speed: float) -> None:
        """Anchor pscsync's shared clock: business time `at` now, running at `speed`. Never
        backwards: if the engine's clock already passed `at` (the simulator ran late), keep it."""
        at = max(at, self.business_clock()) if self.clock_origin else at
        wall = time.time()
        self.clock_origin = (at, wall, speed)
        if self.settings.clock_file:
            clock_file_write(self.settings.clock_file, origin=at, speed=speed, origin_wall=wall)

    # The run ----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        days = self.options.days
        speed = 86400.0 / max(self.settings.day_seconds, 0.001)
        for action in self.plan.actions:
            self.push(Plan.at(action, self.settings.start), action)
        self.ensure_people()
        end = self.settings.start + dt.timedelta(days=days)
        for day in range(days):
            day_start = self.settings.start + dt.timedelta(days=day)
            due_wall = started + day * self.settings.day_seconds
            pause = due_wall - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            self.steer_clock(day_start, speed)
            day_end = min(day_start + dt.timedelta(days=1), end)
            self.run_until(day_end)
            if day % 7 == 6:
                self.echo(f"  day {day + 1}/{days} ({self.date(day)}): {self.summary()}")
        return {**self.stats, "wall_seconds_plan": round(time.monotonic() - started, 1)}

    def run_until(self, until: dt.datetime) -> None:
        while self.queue and self.queue[0][0] < until:
            at, _, action, tries = heapq.heappop(self.queue)
            self.now = at
            self.execute(action, tries)

    def execute(self, action: Action, tries: int) -> None:
        handler = getattr(self, f"do_{action.kind}")
        try:
            if handler(action) is not False:  # False: not done yet, queued again
                self.stats[action.kind] += 1
        except Defer as exc:
            if tries + 1 >= MAX_DEFERRALS:
                self.stats[f"gave_up:{action.kind}"] += 1
                log.info("gave up %s %s: %s", action.kind, action.ref, exc)
                return
            self.stats["deferred"] += 1
            self.push(self.now + dt.timedelta(hours=exc.hours), action, tries + 1)
        except VendorUnavailable as exc:
            self.stats["vendor_unavailable"] += 1
            log.info("%s %s: vendor unavailable, later: %s", action.kind, action.ref, exc)
            if tries + 1 < MAX_DEFERRALS:
                self.push(self.now + dt.timedelta(hours=2), action, tries + 1)
        except VendorError as exc:
            self.stats[f"failed:{action.kind}"] += 1
            log.warning("%s %s failed: %s", action.kind, action.ref, exc)
        except Exception:  # the firm goes on: one broken action must not end the demo
            self.stats[f"error:{action.kind}"] += 1
            log.exception("%s %s: unexpected error", action.kind, action.ref)

    def settle(self, seconds: float) -> None:
        """Hand over to real time: the shared clock runs at speed 1 from now on."""
        self.clock_origin = None
        now = dt.datetime.now(dt.UTC)
        self.now = now
        self.steer_clock(now, 1.0)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        self.operator_round(final=True)

    def summary(self) -> str:
        s = self.stats
        fixes = s["operator_resubmits"] + s["operator_edits"] + s["operator_resolves"]
        refused = s["operator_resubmit_refused"] + s["operator_resolve_refused"]
        return (
            f"deals {s['deal_create']} (won {s['deal_won']}, lost {s['deal_lost']}), "
            f"projects seen {len(self.projects)}, "
            f"weeks of time {s['week_time']}, billing runs {s['billing_run']}, invoices {len(self.invoices)} "
            f"(posted {s['invoices_posted']}, payments {s['payments']}), operator fixes {fixes} "
            f"(resubmitted {s['operator_resubmits']}, corrected in the workbench {s['operator_edits']}, "
            f"resolved {s['operator_resolves']}; refused {refused})"
        )

    # The firm's people -------------------------------------------------------------------------
    def ensure_people(self) -> None:
        for person in self.plan.people:
            if person.entity != "us" or person.ref in self.contacts:
                continue
            first, last = person.name.split(" ", 1)
            self.contacts[person.ref] = self.sf.upsert(
                "Contact",
                f"SIM-{person.ref}",
                {"FirstName": first, "LastName": last, "Title": person.role, "pse__Is_Resource__c": True},
            )

    # CRM: accounts and deals --------------------------------------------------------------------
    def do_account_create(self, action: Action) -> None:
        data = action.data
        fields: dict[str, Any] = {
            "Name": data["name"],
            "AccountNumber": data["number"],
            "BillingCountry": data["country"],
            "Tax_Profile__c": data["tax_profile"],
        }
        parent = self.accounts.get(data.get("parent") or "")
        if parent:
            fields["ParentId"] = parent["id"]
        account_id = self.sf.upsert("Account", f"SIM-{action.ref}", fields)
        self.accounts[action.ref] = {"id": account_id, **data}
        if "duplicate_customer" in data["anomalies"]:
            erp = self.netsuite if data["entity"] == "us" else self.bc
            number = f"H{len(self.accounts):04d}"
            self.accounts[action.ref]["hand_keyed"] = anomalies.hand_keyed_customer(
                erp, name=data["name"], entity=data["entity"], number=number
            )
            self.stats["anomaly:duplicate_customer"] += 1
        if "missing_tax_profile" in data["anomalies"]:
            self.stats["anomaly:missing_tax_profile"] += 1

    def do_deal_create(self, action: Action) -> None:
        data = action.data
        account = self.accounts[data["account"]]
        close = self.date(data["close_day"])
        fields = {
            "Name": f"{account['name']} — {data['name']}",
            "AccountId": account["id"],
            "StageName": data["stage"],
            "Probability": data["probability"],
            "CloseDate": close.isoformat(),
            "Amount": data["amount"],
            "CurrencyIsoCode": data["currency"],
            "Legal_Entity__c": data["entity"],
            "Service_Line__c": data["service_line"],
            "Billing_Model__c": data["billing_model"],
            # The quoted contract term (the version is set at signature).
            "Contract_Start__c": (close + dt.timedelta(days=7 - close.weekday())).isoformat(),
            "Contract_End__c": (
                close + dt.timedelta(days=7 - close.weekday() + data["term_weeks"] * 7 - 1)
            ).isoformat(),
            "PO_Number__c": f"PO-{action.ref.upper()}",
            "Resource_Plan__c": json.dumps(data["resource_plan"]),
        }
        opportunity = self.sf.upsert("Opportunity", f"SIM-{action.ref}", fields)
        self.deals[action.ref] = Deal(ref=action.ref, data=data, opportunity=opportunity, amount=float(data["amount"]))
        if "unknown_service_line" in data["anomalies"]:
            self.stats["anomaly:unknown_service_line"] += 1
            self.anomalies_by_key.setdefault(opportunity, {})["unknown_service_line"] = True

    def do_deal_stage(self, action: Action) -> None:
        deal = self.deals[action.ref]
        self.sf.update(
            "Opportunity",
            deal.opportunity,
            {"StageName": action.data["stage"], "Probability": action.data["probability"]},
        )

    def do_deal_lost(self, action: Action) -> None:
        deal = self.deals[action.ref]
        self.sf.update(
            "Opportunity",
            deal.opportunity,
            {"StageName": "Closed Lost", "Probability": 0, "CloseDate": self.now.date().isoformat()},
        )

    def do_deal_won(self, action: Action) -> None:
        deal = self.deals[action.ref]
        account = self.accounts[deal.data["account"]]
        deal.contract_start = self.date(action.data["contract_start_day"]).isoformat()
        deal.contract_end = self.date(action.data["contract_end_day"]).isoformat()
        known = self.anomalies_by_key.setdefault(deal.opportunity, {})
        if "missing_tax_profile" in account["anomalies"] and not account.get("tax_fixed"):
            known["missing_tax_profile"] = {"account": account["id"], "entity": deal.data["entity"]}
        if account.get("hand_keyed") and not account.get("linked"):
            known["duplicate_customer"] = {
                "account": account["id"],
                "customer": account["hand_keyed"],
                "entity": deal.data["entity"],
            }
        if not known:
            del self.anomalies_by_key[deal.opportunity]
        self.sf.update(
            "Opportunity",
            deal.opportunity,
            {
                "StageName": "Closed Won",
                "Probability": 100,
                "CloseDate": self.now.date().isoformat(),
                "Closed_At__c": self.now.isoformat(timespec="seconds"),
                # The contract attributes are set at signature (version 1).
                "Contract_Start__c": deal.contract_start,
                "Contract_End__c": deal.contract_end,
                "Contract_Version__c": 1,
            },
        )
        deal.won = True

    def do_deal_amend(self, action: Action) -> None:
        deal = self.deals[action.ref]
        if not deal.won:
            return
        deal.version += 1
        deal.amount = float(round(deal.amount * action.data["amount_factor"], -2))
        end = dt.date.fromisoformat(deal.contract_end) + dt.timedelta(weeks=action.data["extend_weeks"])
        deal.contract_end = end.isoformat()
        self.sf.update(
            "Opportunity",
            deal.opportunity,
            {"Amount": deal.amount, "Contract_Version__c": deal.version, "Contract_End__c": deal.contract_end},
        )

    # PSA: projects pscsync provisioned, time, expenses, milestones -------------------------------
    def project_of(self, deal: Deal) -> str:
        key = f"P-{deal.opportunity}"
        if key not in self.projects:
            self.refresh_projects(deal.data["entity"])
        if key not in self.projects:
            raise Defer(f"project {key} not provisioned yet")
        return self.projects[key]

    def kantata_of(self, entity: str) -> Kantata:
        """The entity's Kantata account: the UK's, or the German entity's own."""
        if entity == "de":
            assert self.kantata_de is not None  # checked against the plan in __init__
            return self.kantata_de
        return self.kantata

    def refresh_projects(self, entity: str) -> None:
        if entity == "us":
            for row in self.sf.query("SELECT Id, pscsync_Key__c FROM pse__Proj__c WHERE pscsync_Key__c LIKE 'P-%'"):
                self.projects[row["pscsync_Key__c"]] = row["Id"]
        else:
            for key, found in self.kantata_of(entity).workspaces_by_key().items():
                if key.startswith("P-"):
                    self.projects[key] = found["id"]

    def do_week_time(self, action: Action) -> None:
        deal = self.deals[action.ref]
        if not deal.won:
            return
        project = self.project_of(deal)
        week = self.date(action.data["week_start_day"])
        if "late_time" in action.data["anomalies"]:
            self.stats["anomaly:late_time"] += 1
        if deal.data["entity"] == "us":
            self._certinia_week(deal, project, week, action)
        else:
            self._kantata_week(deal, project, week, action)
            if deal.data["entity"] == "de":
                self._kantata_milestones(deal, project, week)

    def _certinia_week(self, deal: Deal, project: str, week: dt.date, action: Action) -> None:
        approved_on = self.now.date().isoformat()
        for entry in action.data["entries"]:
            person = self.people[entry["person"]]
            assignment = self.assignments.get((deal.ref, person.ref))
            if assignment is None:
                # The person's share of the plan, as a weekday pattern over the contract (what a
                # resource manager schedules when staffing): plan hours for the role ÷ weeks ÷ 5.
                planned = sum(p["hours"] for p in deal.data["resource_plan"] if p["role"] == person.role)
                daily = round(planned / max(int(deal.data.get("term_weeks") or 1), 1) / 5, 1)
                schedule = self.sf.upsert(
                    "pse__Schedule__c",
                    f"SIM-S-{deal.ref}-{person.ref}",
                    {
                        "pse__Start_Date__c": deal.contract_start,
                        "pse__End_Date__c": deal.contract_end,
                        **{f"pse__{day}_Hours__c": daily for day in WEEKDAYS[:5]},
                    },
                )
                assignment = self.sf.upsert(
                    "pse__Assignment__c",
                    f"SIM-A-{deal.ref}-{person.ref}",
                    {
                        "pse__Project__c": project,
                        "pse__Resource__c": self.contacts[person.ref],
                        "pse__Schedule__c": schedule,
                        "pse__Bill_Rate__c": person.rate,
                        "pse__Role__c": person.role,
                    },
                )
                self.assignments[(deal.ref, person.ref)] = assignment
            hours = _spread(entry["hours"])
            fields = {
                "pse__Project__c": project,
                "pse__Resource__c": self.contacts[person.ref],
                "pse__Assignment__c": assignment,
                "pse__Start_Date__c": week.isoformat(),
                "pse__End_Date__c": (week + dt.timedelta(days=6)).isoformat(),
                **{f"pse__{day}_Hours__c": h for day, h in zip(WEEKDAYS, hours, strict=True)},
                "pse__Billable__c": True,
                "pse__Status__c": "Approved",
                "pse__Approved__c": True,
                "pse__Approval_Date__c": approved_on,
            }
            key = f"SIM-T-{deal.ref}-{person.ref}-{week.isoformat()}"
            try:
                self.sf.upsert("pse__Timecard_Header__c", key, fields)
            except VendorError as exc:
                if "FIELD_CUSTOM_VALIDATION_EXCEPTION" not in str(exc):
                    raise  # an approved timecard already there: this week was done before an outage
        expense = action.data.get("expense")
        if expense:
            mixed = "mixed_currency" in action.data["anomalies"]
            person = self.people[action.data["entries"][0]["person"]]
            self.sf.upsert(
                "pse__Expense__c",
                f"SIM-X-{deal.ref}-{week.isoformat()}",
                {
                    "pse__Project__c": project,
                    "pse__Resource__c": self.contacts[person.ref],
                    "pse__Expense_Date__c": (week + dt.timedelta(days=2)).isoformat(),
                    "pse__Amount__c": expense["amount"],
                    "pse__Type__c": expense["category"],
                    "pse__Billable__c": True,
                    "pse__Status__c": "Approved",
                    "CurrencyIsoCode": anomalies.FOREIGN_CURRENCY if mixed else deal.data["currency"],
                },
            )
            if mixed:
                self.stats["anomaly:mixed_currency"] += 1
        if deal.data["billing_model"] == "Fixed Fee":
            week_end = (week + dt.timedelta(days=6)).isoformat()
            for milestone in self.sf.query(
                "SELECT Id, pse__Target_Date__c, pse__Status__c FROM pse__Milestone__c "  # noqa: S608  # nosec B608  # SOQL on ids read back from the vendor
                f"WHERE pse__Project__c = '{project}' AND pse__Status__c != 'Approved'"
            ):
                target = (milestone.get("pse__Target_Date__c") or "")[:10]
                if target and target <= week_end:
                    self.sf.update(
                        "pse__Milestone__c",
                        milestone["Id"],
                        {
                            "pse__Status__c": "Approved",
                            "pse__Actual_Date__c": target,
                            "pse__Approved_for_Billing__c": True,
                        },
                    )
                    self.stats["milestones_completed"] += 1

    def _kantata_week(self, deal: Deal, workspace: str, week: dt.date, action: Action) -> None:
        kantata = self.kantata_of(deal.data["entity"])
        currency = str(deal.data["currency"])
        entries = []
        for n, entry in enumerate(action.data["entries"]):
            person = self.people[entry["person"]]
            user = KANTATA_USERS[n % len(KANTATA_USERS)]
            if (workspace, user) not in self.participations:
                try:
                    kantata.create(
                        "participations", "participation", {"workspace_id": workspace, "user_id": user, "role": "maven"}
                    )
                except VendorError as exc:
                    log.info("participation: %s", exc)
                self.participations.add((workspace, user))
            for day, hours in enumerate(_spread(entry["hours"])):
                if hours:
                    entries.append(
                        {
                            "workspace_id": workspace,
                            "user_id": user,
                            "date_performed": (week + dt.timedelta(days=day)).isoformat(),
                            "time_in_minutes": int(hours * 60),
                            "rate_in_cents": person.rate * 100,
                            "billable": True,
                            "approved": True,
                            "notes": f"{person.name} ({person.role})",
                        }
                    )
        if entries:
            kantata.request("POST", "/api/v1/time_entries", json={"time_entries": entries}, what="time entries")
        expense = action.data.get("expense")
        if expense:
            mixed = "mixed_currency" in action.data["anomalies"]
            kantata.create(
                "expenses",
                "expense",
                {
                    "workspace_id": workspace,
                    "date": (week + dt.timedelta(days=2)).isoformat(),
                    "category": expense["category"],
                    "amount_in_cents": expense["amount"] * 100,
                    "currency": anomalies.foreign_currency(currency) if mixed else currency,
                    "billable": True,
                    "approved": True,
                },
            )
            if mixed:
                self.stats["anomaly:mixed_currency"] += 1

    def _kantata_milestones(self, deal: Deal, workspace: str, week: dt.date) -> None:
        """The project manager completes the milestones pscsync planned in the workspace (stories
        of type milestone) whose due date falls in the week just approved."""
        kantata = self.kantata_of(deal.data["entity"])
        week_end = (week + dt.timedelta(days=6)).isoformat()
        for story in kantata.index("stories", workspace_id=workspace, story_type="milestone"):
            due = str(story.get("due_date") or "")[:10]
            if story.get("state") != "completed" and due and due <= week_end:
                kantata.update("stories", "story", str(story["id"]), {"state": "completed"})
                self.stats["milestones_completed"] += 1

    # PSA billing runs ----------------------------------------------------------------------------
    def do_billing_run(self, action: Action) -> None:
        today = self.now.date().isoformat()
        events = self.sf.billing_run(date=today)
        if events:
            quoted = ", ".join(f"'{e}'" for e in events)
            currency_of = {}
            for event in self.sf.query(
                f"SELECT Id, pse__Project__r.pse__Currency__c FROM pse__Billing_Event__c WHERE Id IN ({quoted})"  # noqa: S608  # nosec B608  # SOQL on ids read back from the vendor
            ):
                currency = ((event.get("pse__Project__r") or {}).get("pse__Currency__c") or "USD").upper()
                currency_of[event["Id"]] = currency
                # The PSA's rate on the billing day (what reconciliation compares with the ERP's).
                rate = fx_rate(currency, self.now.date())
                self.sf.update("pse__Billing_Event__c", event["Id"], {"pscsync_Exchange_Rate__c": rate})
            for item in self.sf.query(
                "SELECT pse__Billing_Event__c, CurrencyIsoCode FROM pse__Billing_Event_Item__c "  # noqa: S608  # nosec B608  # SOQL on ids read back from the vendor
                f"WHERE pse__Billing_Event__c IN ({quoted})"
            ):
                event = item["pse__Billing_Event__c"]
                project_currency = currency_of.get(event, "USD")
                if (item.get("CurrencyIsoCode") or project_currency).upper() != project_currency:
                    self.anomalies_by_key.setdefault(event, {})["mixed_currency"] = {
                        "psa": "certinia",
                        "currency": project_currency,
                    }
        self.stats["billing_events"] += len(events)
        for entity in ("uk", "de"):
            if entity == "de" and self.kantata_de is None:
                continue
            self._kantata_billing_run(entity, today)

    def _kantata_billing_run(self, entity: str, today: str) -> None:
        """Per running project of the entity's Kantata account, an invoice of its approved,
        uninvoiced time and expenses."""
        kantata = self.kantata_of(entity)
        currency = str(ENTITIES[entity]["currency"])
        self.refresh_projects(entity)
        projects = {
            self.projects[f"P-{d.opportunity}"]
            for d in self.deals.values()
            if d.won and d.data["entity"] == entity and f"P-{d.opportunity}" in self.projects
        }
        for workspace in sorted(projects, key=int):
            time_ids = [
                str(e["id"])
                for e in kantata.index("time_entries", workspace_id=workspace)
                if e.get("approved") and not e.get("is_invoiced") and e.get("billable", True)
            ]
            expenses = [
                e
                for e in kantata.index("expenses", workspace_id=workspace)
                if e.get("approved", True) and not e.get("is_invoiced") and e.get("billable", True)
            ]
            if not time_ids and not expenses:
                continue
            invoice = kantata.create(
                "invoices",
                "invoice",
                {
                    "workspace_id": workspace,
                    "time_entry_ids": time_ids,
                    "expense_ids": [str(e["id"]) for e in expenses],
                    "invoice_date": today,
                    "title": f"Services to {today}",
                    "draft": True,
                },
            )
            self.stats["kantata_invoices"] += 1
            self.stats[f"kantata_invoices:{entity}"] += 1
            odd = [str(e["id"]) for e in expenses if (e.get("currency") or currency).upper() != currency]
            if odd:
                self.anomalies_by_key[f"kantata-invoice:{invoice['id']}"] = {
                    "mixed_currency": {"psa": "kantata", "entity": entity, "expenses": odd, "currency": currency}
                }

    # ERP: finance posts invoices and receives payments -------------------------------------------
    def do_finance_round(self, action: Action) -> None:
        today = self.now.date()
        rounds = [("netsuite", self._netsuite_invoices), ("businesscentral", self._bc_invoices)]
        if self.d365 is not None:
            rounds.append(("dynamicsfinance", self._d365_invoices))
        for erp, discover in rounds:
            try:
                discover()
                for invoice in [i for i in self.invoices.values() if i.erp == erp]:
                    self._post_and_collect(invoice, today)
            except VendorUnavailable as exc:
                self.stats["finance_round_skipped"] += 1
                log.info("finance round: %s unavailable: %s", erp, exc)
        self.operator_round()

    def _plan_invoice(self, invoice: Invoice) -> None:
        rng = record_rng(self.options.seed, invoice.key)
        billed = dt.date.fromisoformat(invoice.date[:10]) if invoice.date else self.now.date()
        invoice.post_on = max(billed, self.now.date()) + dt.timedelta(days=rng.randint(0, 3))
        if invoice.erp == "netsuite" and record_rng(self.options.seed, invoice.key + ":approval").random() < 0.15:
            # The approver is away: the invoice waits in Pending Approval for two to three weeks,
            # so the demo shows work on an unposted invoice (unbilled WIP, not receivables).
            invoice.post_on += dt.timedelta(days=record_rng(self.options.seed, invoice.key + ":wait").randint(14, 21))
        # Only where a rate matters: a NetSuite invoice in another currency than the entity's.
        invoice.fx_date = (
            rng.random() < self.options.fx_date and invoice.erp == "netsuite" and invoice.currency not in ("", "USD")
        )
        behaviour = rng.random()
        pay_day = invoice.post_on + dt.timedelta(days=rng.randint(14, 45))
        if behaviour < 0.7:
            invoice.payments = [(pay_day, invoice.total)]
        elif behaviour < 0.85:
            first = round(invoice.total * rng.choice((0.3, 0.5)), 2)
            invoice.payments = [
                (pay_day, first),
                (pay_day + dt.timedelta(days=rng.randint(10, 30)), round(invoice.total - first, 2)),
            ]
        # else: not paid yet (overdue receivables for the dashboards)

    def _netsuite_invoices(self) -> None:
        rows = self.netsuite.suiteql(
            "SELECT id, externalid, tranid, total, entity, trandate, currency FROM transaction "
            "WHERE type = 'CustInvc' ORDER BY id"
        )
        for row in rows:
            key = row.get("externalid") or f"ns-{row['id']}"
            if key in self.invoices or not str(key).startswith("I-"):
                continue
            invoice = Invoice(
                erp="netsuite",
                key=key,
                record_id=str(row["id"]),
                customer=str(row.get("entity") or ""),
                total=float(row.get("total") or 0),
                date=_us_date(row.get("trandate")),
                number=row.get("tranid") or "",
                currency=NETSUITE_CURRENCIES.get(str(row.get("currency") or "1"), "USD"),
            )
            self._plan_invoice(invoice)
            self.invoices[key] = invoice

    def _bc_invoices(self) -> None:
        for row in self.bc.list("salesInvoices"):
            key = row.get("externalDocumentNumber") or ""
            if not key.startswith("I-") or key in self.invoices:
                continue
            invoice = Invoice(
                erp="businesscentral",
                key=key,
                record_id=str(row["id"]),
                customer=str(row.get("customerId") or ""),
                total=float(row.get("totalAmountIncludingTax") or 0),
                date=str(row.get("invoiceDate") or ""),
                number=str(row.get("number") or ""),
                posted=row.get("status") not in ("Draft", None),
            )
            self._plan_invoice(invoice)
            self.invoices[key] = invoice

    def _d365_invoices(self) -> None:
        """Free text invoices pscsync wrote in the German legal entity (our key in
        CustomerReference), once their lines are there (the total is theirs)."""
        assert self.d365 is not None
        headers = [
            row
            for row in self.d365.list("FreeTextInvoiceHeaders", f"dataAreaId eq '{D365_COMPANY}'")
            if str(row.get("CustomerReference") or "").startswith("I-")
            and row["CustomerReference"] not in self.invoices
        ]
        if not headers:
            return
        totals: dict[str, float] = {}
        for line in self.d365.list("FreeTextInvoiceLines", f"dataAreaId eq '{D365_COMPANY}'"):
            parent = str(line.get("ParentRecId"))
            totals[parent] = totals.get(parent, 0.0) + float(line.get("TransactionCurrencyAmount") or 0)
            totals[parent] += float(line.get("SalesTaxAmount") or 0)
        for row in headers:
            record_id = str(row["InvoiceIdentifier"])
            if not totals.get(record_id):
                continue  # its lines are not written yet: the next round sees it
            invoice = Invoice(
                erp="dynamicsfinance",
                key=str(row["CustomerReference"]),
                record_id=record_id,
                customer=str(row.get("InvoiceAccount") or row.get("CustomerAccount") or ""),
                total=round(totals[record_id], 2),
                date=str(row.get("InvoiceDate") or "")[:10],
                number=str(row.get("FreeTextNumber") or ""),
                posted=row.get("IsPosted") == "Yes",
                currency=str(row.get("CurrencyCode") or "EUR"),
            )
            self._plan_invoice(invoice)
            self.invoices[invoice.key] = invoice

    def _post_and_collect(self, invoice: Invoice, today: dt.date) -> None:
        if not invoice.posted and invoice.post_on and invoice.post_on <= today:
            posted_on = invoice.post_on
            if invoice.fx_date:
                # Finance dates the invoice on another day than the PSA billed it: converted at
                # another day's rate, and perhaps in another period.
                posted_on = invoice.post_on + dt.timedelta(
                    days=record_rng(self.options.seed, invoice.key + ":fx").randint(3, 9)
                )
                self.stats["anomaly:fx_date"] += 1
            if invoice.erp == "netsuite":
                billed = dt.date.fromisoformat(invoice.date[:10]) if invoice.date else posted_on
                dated = posted_on if invoice.fx_date else billed
                fields: dict[str, Any] = {
                    "approvalStatus": {"id": "2", "refName": "Approved"},
                    "exchangeRate": fx_rate(invoice.currency or "USD", dated),
                }
                if invoice.fx_date:
                    fields["tranDate"] = posted_on.isoformat()
                self.netsuite.update("invoice", invoice.record_id, fields)
            elif invoice.erp == "dynamicsfinance":
                assert self.d365 is not None
                self.d365.post_invoice(D365_COMPANY, invoice.record_id)
                (header,) = self.d365.list(
                    "FreeTextInvoiceHeaders",
                    f"dataAreaId eq '{D365_COMPANY}' and InvoiceIdentifier eq {int(invoice.record_id)}",
                )
                invoice.number = str(header.get("FreeTextNumber") or invoice.number)
            else:
                record = next(r for r in self.bc.list("salesInvoices", f"id eq {invoice.record_id}"))
                if record.get("status") == "Draft":
                    if invoice.fx_date:
                        self.bc.update("salesInvoices", record, {"postingDate": posted_on.isoformat()})
                    self.bc.post_invoice(invoice.record_id)
                    record = next(r for r in self.bc.list("salesInvoices", f"id eq {invoice.record_id}"))
                invoice.number = str(record.get("number") or invoice.number)
                invoice.total = float(record.get("totalAmountIncludingTax") or invoice.total)
            invoice.posted = True
            self.stats["invoices_posted"] += 1
        if not invoice.posted:
            return
        while invoice.payments and invoice.payments[0][0] <= today:
            paid_on, amount = invoice.payments[0]
            n = len([k for k in self.stats if k.startswith(f"paid:{invoice.key}")])
            if invoice.erp == "netsuite":
                self.netsuite.create(
                    "customerPayment",
                    {
                        "externalId": f"PAY-{invoice.key}-{n + 1}",
                        "customer": {"id": invoice.customer},
                        "payment": amount,
                        "tranDate": paid_on.isoformat(),
                        "apply": {"items": [{"doc": {"id": invoice.record_id}, "apply": True, "amount": amount}]},
                    },
                )
            elif invoice.erp == "dynamicsfinance":
                assert self.d365 is not None
                # A customer payment journal with one line settling the posted invoice.
                journal = self.d365.create(
                    "CustomerPaymentJournalHeaders",
                    {"dataAreaId": D365_COMPANY, "JournalName": "CustPay", "Description": f"Payment {invoice.number}"},
                )
                self.d365.create(
                    "CustomerPaymentJournalLines",
                    {
                        "dataAreaId": D365_COMPANY,
                        "JournalBatchNumber": journal["JournalBatchNumber"],
                        "AccountDisplayValue": invoice.customer,
                        "CreditAmount": amount,
                        "TransactionDate": f"{paid_on.isoformat()}T12:00:00Z",
                        "MarkedInvoice": invoice.number,
                        "PaymentReference": f"PAY-{invoice.key}-{n + 1}"[:60],
                    },
                )
            else:
                self.bc.create(
                    "customerPayments",
                    {
                        "customerId": invoice.customer,
                        "postingDate": paid_on.isoformat(),
                        "externalDocumentNumber": f"PAY-{invoice.key}-{n + 1}"[:35],
                        "amount": -amount,
                        "appliesToInvoiceId": invoice.record_id,
                        "description": f"Payment {invoice.number}"[:100],
                    },
                )
            self.stats[f"paid:{invoice.key}:{n + 1}"] = 1
            self.stats["payments"] += 1
            invoice.payments.pop(0)

    # Incidents ------------------------------------------------------------------------------------
    def do_erp_outage(self, action: Action) -> None:
        sandbox = self.drivers[action.data["sandbox"]]
        anomalies.outage_start(sandbox)
        self.stats["anomaly:erp_outage"] += 1
        self.echo(f"  {self.now:%Y-%m-%d %H:%M}: {sandbox.name} is down (503) for {action.data['hours']} h")
        self._incident_end_later(action)

    def do_rate_limit_burst(self, action: Action) -> None:
        sandbox = self.drivers[action.data["sandbox"]]
        anomalies.rate_limit_start(sandbox, action.data["per_minute"])
        self.stats["anomaly:rate_limit_burst"] += 1
        self.echo(f"  {self.now:%Y-%m-%d %H:%M}: {sandbox.name} allows {action.data['per_minute']} requests a minute")
        self._incident_end_later(action)

    def _incident_end_later(self, action: Action) -> None:
        end = Action(
            action.day,
            action.minute,
            "incident_end",
            action.ref,
            {"sandbox": action.data["sandbox"], "not_before": time.monotonic() + INCIDENT_MIN_WALL_SECONDS},
        )
        self.push(self.now + dt.timedelta(hours=action.data["hours"]), end)

    def do_incident_end(self, action: Action) -> bool:
        if action.data["not_before"] > time.monotonic():
            # At full speed hours pass in a blink: keep the incident on for a few wall seconds,
            # so the engine meets it, while the firm's business goes on.
            self.push(self.now + dt.timedelta(minutes=30), action)
            return False
        anomalies.incident_end(self.drivers[action.data["sandbox"]])
        return True

    # Operators --------------------------------------------------------------------------------
    def operator_round(self, final: bool = False) -> None:
        """Look at the workbench; plan to fix a share of what is there after a delay; do what is due."""
        if self.workbench is None:
            return
        try:
            exceptions = self.workbench.exceptions()
        except (WorkbenchUnavailable, httpx.HTTPError, OSError, ValueError) as exc:
            if not self.stats["workbench_unavailable"]:
                self.echo(f"  operators could not reach the workbench ({exc}); they try again at each round")
            self.stats["workbench_unavailable"] += 1
            return
        now = self.business_clock() if not final else self.now
        for row in exceptions:
            exception_id = int(row["id"])
            if exception_id in self.operator_done or exception_id in self.operator_queue:
                continue
            rng = record_rng(self.options.seed, f"operator:{row.get('business_key')}:{row.get('attempt_count')}")
            if rng.random() >= self.options.operator_fix_share:
                self.operator_done.add(exception_id)  # left for the demo's user to work
                self.stats["operator_left"] += 1
                continue
            delay = dt.timedelta(hours=self.options.operator_delay_hours * rng.uniform(0.5, 1.5))
            self.operator_queue[exception_id] = now + (dt.timedelta(0) if final else delay)
        # The deal's own handoff first: the others of the same key wait on it.
        for row in sorted(exceptions, key=lambda r: (r.get("flow") != "quote-to-project", int(r["id"]))):
            exception_id = int(row["id"])
            due = self.operator_queue.get(exception_id)
            if due is None or due > now:
                continue
            del self.operator_queue[exception_id]
            self.operator_done.add(exception_id)
            if self.operator_fix(row) is False:  # nothing they can do yet: look again tomorrow
                self.operator_done.discard(exception_id)
                self.operator_queue[exception_id] = now + dt.timedelta(hours=24)
                continue
            # Having put the source right, they resubmit the key's other exceptions too.
            for other in exceptions:
                other_id = int(other["id"])
                if other.get("business_key") == row.get("business_key") and other_id not in self.operator_done:
                    self.operator_queue.pop(other_id, None)
                    self.operator_done.add(other_id)
                    self.operator_fix(other)

    def operator_fix(self, row: dict[str, Any]) -> bool | None:
        key = str(row.get("business_key") or "")
        known = self.anomalies_by_key.get(key, {})
        done = []
        try:
            if "missing_tax_profile" in known:
                info = known["missing_tax_profile"]
                done.append(anomalies.fix_tax_profile(self.sf, account_id=info["account"], entity=info["entity"]))
                for account in self.accounts.values():
                    if account["id"] == info["account"]:
                        account["tax_fixed"] = True
            if "unknown_service_line" in known and row.get("flow") != "project-to-bill":
                # Corrected in the workbench: the retired service line becomes Advisory in the deal
                # the handoff read, and it resumes with that (sales tidies the CRM in its own time).
                return self._operator_edit(row, {"deal": {"service_line": "Advisory"}})
            if "duplicate_customer" in known:
                info = known["duplicate_customer"]
                erp = self.netsuite if info["entity"] == "us" else self.bc
                done.append(
                    anomalies.fix_duplicate_customer(erp, customer_id=info["customer"], account_id=info["account"])
                )
                for account in self.accounts.values():
                    if account["id"] == info["account"]:
                        account["linked"] = True
            if "mixed_currency" in known:
                info = known["mixed_currency"]
                if info["psa"] == "certinia":
                    done.append(anomalies.fix_mixed_currency_certinia(self.sf, event_id=key, currency=info["currency"]))
                else:
                    done.append(
                        anomalies.fix_mixed_currency_kantata(
                            self.kantata_of(info.get("entity", "uk")),
                            expense_ids=info["expenses"],
                            currency=info.get("currency", "GBP"),
                        )
                    )
        except VendorError as exc:
            self.stats["operator_fix_failed"] += 1
            log.info("operator could not correct %s: %s", key, exc)
            return None
        # A billing check that found no ERP customer names it as data (the API's failed_key, our
        # "C-<account>"), not only in its words: the account whose deal the staff put right.
        waiting_for = KEYS["customer"].parse(str(row.get("failed_key") or "")) or {}
        if not done and waiting_for.get("account") in self.fixed_accounts:
            done.append(f"customer {row['failed_key']} exists now")  # its deal was put right
            reread = False
        else:
            reread = bool(done)
        if not done and row.get("last_error_class") not in ("transient", "unknown", "conflict", "timeout"):
            # A cause the simulated staff cannot fix in a source: a share of them they handle by
            # hand and resolve (decided once per exception); the others they look at again later.
            if (
                record_rng(self.options.seed, f"resolve:{key}:{row['id']}").random()
                < self.options.operator_resolve_share
            ):
                return self._operator_resolve(row)
            return False
        comment = "; ".join(done) or "vendor was unavailable; retrying"
        try:
            status = self.workbench.resubmit(int(row["id"]), comment, reread=reread)  # type: ignore[union-attr]
        except (WorkbenchUnavailable, httpx.HTTPError, OSError) as exc:
            self.stats["operator_resubmit_failed"] += 1
            log.info("resubmit %s: %s", row["id"], exc)
            return None
        self.stats["operator_resubmits" if status < 400 else "operator_resubmit_refused"] += 1
        if status < 400:
            self._deal_put_right(row)
        return None

    def _deal_put_right(self, row: dict[str, Any]) -> None:
        """A deal's quote-to-project resumed: its billing waiting on the customer may go on too."""
        if row.get("flow") == "quote-to-project":
            key = str(row.get("business_key") or "")
            deal = next((d for d in self.deals.values() if d.opportunity == key), None)
            if deal is not None:
                self.fixed_accounts.add(self.accounts[deal.data["account"]]["id"])

    def _operator_edit(self, row: dict[str, Any], changes: dict[str, dict[str, Any]]) -> bool | None:
        """Resubmit with corrected values in the read document (the workbench's edit)."""
        try:
            document = self.workbench.document(int(row["id"]))  # type: ignore[union-attr]
            if not document:
                return False  # nothing read to edit yet: look again later
            edited = {**document, **{part: {**(document.get(part) or {}), **v} for part, v in changes.items()}}
            said = "; ".join(f"{part} {name} → {value}" for part, v in changes.items() for name, value in v.items())
            status = self.workbench.resubmit_edited(int(row["id"]), edited, f"corrected in the workbench: {said}")  # type: ignore[union-attr]
        except (WorkbenchUnavailable, httpx.HTTPError, OSError, ValueError) as exc:
            self.stats["operator_resubmit_failed"] += 1
            log.info("edit %s: %s", row["id"], exc)
            return None
        self.stats["operator_edits" if status < 400 else "operator_resubmit_refused"] += 1
        if status < 400:
            self._deal_put_right(row)
        return None

    def _operator_resolve(self, row: dict[str, Any]) -> bool | None:
        how = {
            "project-to-bill": "invoiced by hand in the ERP",
            "bill-to-cash": "invoice status set by hand in the CRM and the PSA",
            "contract-change": "contract change keyed by hand in the PSA and the ERP",
        }.get(str(row.get("flow")), "set up by hand in the target systems")
        try:
            status = self.workbench.resolve(int(row["id"]), f"handled outside pscsync: {how}")  # type: ignore[union-attr]
        except (WorkbenchUnavailable, httpx.HTTPError, OSError) as exc:
            self.stats["operator_resubmit_failed"] += 1
            log.info("resolve %s: %s", row["id"], exc)
            return None
        self.stats["operator_resolves" if status < 400 else "operator_resolve_refused"] += 1
        return None


def _spread(hours: int) -> list[int]:
    """A week's hours over Monday to Friday (whole hours, at most 10 a day)."""
    per_day = [0] * 5
    left = hours
    for day in range(5):
        per_day[day] = min(10, left // (5 - day) + (1 if left % (5 - day) else 0))
        left -= per_day[day]
    return per_day


def _us_date(value: Any) -> str:
    """SuiteQL answers dates as M/D/YYYY."""
    text = str(value or "")
    if "/" in text:
        month, day, year = text.split("/")[:3]
        return f"{int(year[:4]):04d}-{int(month):02d}-{int(day):02d}"
    return text[:10]


def build(options: Options, settings: Settings, drivers: dict[str, Driver], **kwargs: Any) -> Simulation:
    plan = scenario_plan(options, start_weekday=settings.start.weekday())
    return Simulation(plan, settings, drivers, **kwargs)


__all__ = ["ENTITIES", "Settings", "Simulation", "build"]
