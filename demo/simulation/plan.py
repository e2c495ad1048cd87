"""The firm and its scenario, generated from a seed: pure data, no I/O, no wall clock.

A plan is a list of `Action`s, each at a business time measured from the simulation's start
(`day`, `minute`), so the same seed and options give the same plan whatever day it is run;
`Plan.at(action, start)` places an action on the calendar. Records the plan refers to are named
by plan references (`acct-7`, `deal-12`); the simulator learns their vendor ids as it creates them.

Everything the engine decides (when a project appears, which invoices it writes) is not in the
plan: the simulator reacts to it, and every choice it makes about such a record is drawn from a
generator seeded with (seed, the record's business key), so it does not depend on arrival order.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import random
from dataclasses import dataclass, field
from typing import Any

ENTITIES = {
    "us": {"currency": "USD", "country": "US", "tax_profiles": ["US-STANDARD", "US-STANDARD", "US-EXEMPT"]},
    "uk": {"currency": "GBP", "country": "GB", "tax_profiles": ["GB-VAT20"]},
    "de": {"currency": "EUR", "country": "DE", "tax_profiles": ["DE-VAT19"]},
}
# The US entity also serves Canadian clients, contracted and billed in CAD (NetSuite subsidiary 3
# allows CAD): the deals where exchange rates, and so the FX-date anomaly, matter.
CANADA = {"currency": "CAD", "country": "CA", "tax_profiles": ["US-EXEMPT"]}
NETSUITE_CURRENCIES = {"1": "USD", "2": "GBP", "3": "CAD", "4": "EUR"}
# Functional-currency value of one unit, around which the daily rate moves.
FX_BASE = {"USD": 1.0, "CAD": 0.73, "EUR": 1.08, "GBP": 1.27}


def fx_rate(currency: str, day: dt.date) -> float:
    """The firm's daily exchange rate to USD: deterministic, different from one day to the next."""
    base = FX_BASE.get(currency.upper(), 1.0)
    if base == 1.0:
        return 1.0
    return round(base + ((day.toordinal() * 37) % 41 - 20) / 10000, 4)


SERVICE_LINES = ("Advisory", "Implementation", "Managed Services", "Cloud Migration")
UNKNOWN_SERVICE_LINES = ("Cyber Security", "Data Strategy", "Digital Forensics")
# Role -> hourly bill rate, per entity (USD, GBP, EUR).
RATE_CARD = {
    "us": {
        "Engagement Manager": 310,
        "Project Manager": 240,
        "Solution Architect": 265,
        "Senior Consultant": 215,
        "Consultant": 165,
        "Service Manager": 190,
        "Support Engineer": 120,
        "Cloud Architect": 255,
    },
    "uk": {
        "Engagement Manager": 240,
        "Project Manager": 185,
        "Solution Architect": 205,
        "Senior Consultant": 165,
        "Consultant": 125,
        "Service Manager": 145,
        "Support Engineer": 95,
        "Cloud Architect": 195,
    },
    "de": {
        "Engagement Manager": 260,
        "Project Manager": 200,
        "Solution Architect": 225,
        "Senior Consultant": 180,
        "Consultant": 140,
        "Service Manager": 160,
        "Support Engineer": 105,
        "Cloud Architect": 215,
    },
}
# The roles each service line staffs (hours over the contract), as in the shipped default plans.
STAFFING = {
    "Advisory": [("Engagement Manager", 80), ("Senior Consultant", 240)],
    "Implementation": [("Project Manager", 200), ("Solution Architect", 240), ("Consultant", 480)],
    "Managed Services": [("Service Manager", 160), ("Support Engineer", 640)],
    "Cloud Migration": [("Cloud Architect", 200), ("Consultant", 400)],
}
FIRST_NAMES = ("Ada", "Ben", "Chidi", "Dana", "Eli", "Farah", "Gus", "Hana", "Ivo", "Jia", "Kofi", "Lena", "Mo", "Nia")
LAST_NAMES = ("Okafor", "Lindqvist", "Moreau", "Tanaka", "Reyes", "Novak", "Haddad", "Brennan", "Iyer", "Kowalski")
CLIENT_STEMS = (
    "Contoso",
    "Fabrikam",
    "Globex",
    "Initech",
    "Umbrella",
    "Hooli",
    "Vandelay",
    "Stark",
    "Wayne",
    "Tyrell",
    "Cyberdyne",
    "Soylent",
    "Wonka",
    "Acme",
    "Gringotts",
    "Oceanic",
    "Massive Dynamic",
    "Aperture",
    "Dunder",
    "Pied Piper",
    "Nakatomi",
    "Monarch",
    "Virtucon",
    "Blue Sun",
)
CLIENT_SUFFIXES = {
    "us": ("Inc.", "Corp.", "Health", "Bank", "Logistics"),
    "uk": ("Ltd", "plc", "Group", "Retail"),
    "de": ("GmbH", "AG", "SE", "Handel GmbH"),
}
# Entities whose ERP the duplicate-customer anomaly is staged in (a hand-keyed NetSuite or BC
# customer the operators can link); the German ledger's customers are all keyed by pscsync.
DUPLICATE_CUSTOMER_ENTITIES = ("us", "uk")
DEAL_NOUN = {"uk": "programme", "de": "project"}
STAGES = (("Prospecting", 10), ("Qualification", 20), ("Proposal/Price Quote", 50), ("Negotiation/Review", 75))


@dataclass(frozen=True)
class Options:
    """What the simulated firm does and how often things go wrong (rates are shares 0..1)."""

    days: int = 90
    seed: int = 7
    deals_per_week: float = 3.0
    uk_share: float = 0.35
    de_share: float = 0.2
    cad_share: float = 0.15
    win_rate: float = 0.65
    amendment_rate: float = 0.25
    missing_tax_profile: float = 0.06
    unknown_service_line: float = 0.05
    duplicate_customer: float = 0.05
    erp_outages: int = 1
    rate_limit_bursts: int = 1
    late_time: float = 0.05
    fx_date: float = 0.3
    mixed_currency: float = 0.04
    operator_fix_share: float = 0.7
    operator_resolve_share: float = 0.5
    operator_delay_hours: float = 20.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Person:
    ref: str
    name: str
    entity: str
    role: str
    rate: int


@dataclass(frozen=True)
class Action:
    day: int
    minute: int
    kind: str
    ref: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"day": self.day, "minute": self.minute, "kind": self.kind, "ref": self.ref, "data": self.data}


@dataclass
class Plan:
    options: Options
    people: list[Person]
    actions: list[Action]

    @staticmethod
    def at(action: Action, start: dt.datetime) -> dt.datetime:
        return start + dt.timedelta(days=action.day, minutes=action.minute)

    def to_json(self) -> str:
        """A canonical text of the plan: equal plans give equal text (the determinism check)."""
        return json.dumps(
            {
                "options": self.options.to_dict(),
                "people": [dataclasses.asdict(p) for p in self.people],
                "actions": [a.to_dict() for a in self.actions],
            },
            sort_keys=True,
        )

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for action in self.actions:
            counts[action.kind] = counts.get(action.kind, 0) + 1
            for anomaly in action.data.get("anomalies", []):
                counts[f"anomaly:{anomaly}"] = counts.get(f"anomaly:{anomaly}", 0) + 1
        return counts


def start_of(now: dt.datetime, days: int) -> dt.datetime:
    """The simulation starts `days` before `now`, at midnight UTC (whole business days)."""
    day = (now - dt.timedelta(days=days)).astimezone(dt.UTC).date()
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def entity_for(draw: float, options: Options) -> str:
    """The legal entity a new deal is for, from a draw in [0, 1): the UK's share, then the German
    entity's, the rest the US's."""
    if draw < options.uk_share:
        return "uk"
    return "de" if draw < options.uk_share + options.de_share else "us"


def record_rng(seed: int, key: str) -> random.Random:
    """The generator for choices about a record the engine created (an invoice, a project):
    seeded by the record's business key, so the order records are seen in does not matter."""
    return random.Random(f"{seed}:{key}")


def scenario_plan(options: Options, start_weekday: int = 0) -> Plan:
    """The firm's people and everything that happens to it over `options.days` days.

    `start_weekday` (Monday 0) is the weekday of day 0, so weekly time lands on Mondays and
    billing runs on month ends; pass `start.weekday()`. It is not drawn from the clock here.
    """
    rng = random.Random(options.seed)
    people = _people(rng)
    actions: list[Action] = []
    accounts: dict[str, list[str]] = {"us": [], "uk": [], "de": []}
    account_market: dict[str, dict[str, Any]] = {}
    names: set[str] = set()
    deal_count = 0
    # A book of deals already in negotiation when the story starts, so delivery begins at once,
    # then new deals arriving through the period.
    book = max(2, int(2 * options.deals_per_week))
    arrivals: list[tuple[int, bool]] = [(rng.randint(0, 2), True) for _ in range(book)]
    day = 0.0
    while True:
        day += rng.expovariate(options.deals_per_week / 7.0)
        if day >= options.days - 1:
            break
        arrivals.append((int(day), False))
    for created, advanced in sorted(arrivals):
        deal_count += 1
        entity = entity_for(rng.random(), options)
        deal_ref = f"deal-{deal_count}"
        # The client: a new account, or one the firm already works for.
        if accounts[entity] and rng.random() < 0.3:
            account_ref = rng.choice(accounts[entity])
        else:
            account_ref = f"acct-{entity}-{len(accounts[entity]) + 1}"
            accounts[entity].append(account_ref)
            name = _client_name(rng, entity, names)
            market = CANADA if entity == "us" and rng.random() < options.cad_share else ENTITIES[entity]
            account_market[account_ref] = market
            anomalies = []
            if rng.random() < options.missing_tax_profile:
                anomalies.append("missing_tax_profile")
            if rng.random() < options.duplicate_customer and entity in DUPLICATE_CUSTOMER_ENTITIES:
                anomalies.append("duplicate_customer")
            parent = None
            if len(accounts[entity]) > 3 and rng.random() < 0.15:
                parent = rng.choice(accounts[entity][:-1])
            actions.append(
                Action(
                    created,
                    rng.randint(7 * 60, 8 * 60),  # before any deal of the day (those start at 9:00)
                    "account_create",
                    account_ref,
                    {
                        "name": name,
                        "entity": entity,
                        "number": f"{entity.upper()}-{1000 + len(accounts[entity])}",
                        "country": market["country"],
                        "tax_profile": None
                        if "missing_tax_profile" in anomalies
                        else rng.choice(market["tax_profiles"]),
                        "parent": parent,
                        "anomalies": anomalies,
                    },
                )
            )
        currency = account_market[account_ref]["currency"]
        actions.extend(
            _deal(rng, options, deal_ref, account_ref, entity, created, advanced, people, start_weekday, currency)
        )
    _german_onboarding(actions, options)
    actions.extend(_billing_runs(options, start_weekday))
    actions.extend(_incidents(rng, options))
    actions.sort(key=lambda a: (a.day, a.minute, a.kind, a.ref))
    return Plan(options=options, people=people, actions=actions)


def _german_onboarding(actions: list[Action], options: Options) -> None:
    """The German entity is new to the firm's systems, so its data has the usual slips at least
    once wherever those anomalies are on: the account of its first won deal is keyed without a
    tax profile, and its first expense comes in another currency (a trip to the UK, in pounds).
    Its exceptions are then there for the operators to correct whatever the seed; no draw is
    taken, so the rest of the plan is as the seed made it."""
    deals = {a.ref: a.data for a in actions if a.kind == "deal_create" and a.data["entity"] == "de"}
    first_won = next(
        (a.ref for a in sorted(actions, key=lambda a: (a.day, a.minute)) if a.kind == "deal_won" and a.ref in deals),
        None,
    )
    accounts = {a.ref: a for a in actions if a.kind == "account_create" and a.data["entity"] == "de"}
    if options.missing_tax_profile > 0 and first_won and deals[first_won]["account"] in accounts:
        data = accounts[deals[first_won]["account"]].data
        if "missing_tax_profile" not in data["anomalies"]:
            data["tax_profile"] = None
            data["anomalies"].append("missing_tax_profile")
    weeks = sorted(
        (a for a in actions if a.kind == "week_time" and a.ref in deals and "expense" in a.data),
        key=lambda a: (a.day, a.minute),
    )
    if options.mixed_currency > 0 and weeks and not any("mixed_currency" in w.data["anomalies"] for w in weeks):
        weeks[0].data["anomalies"].append("mixed_currency")


def _people(rng: random.Random) -> list[Person]:
    people: list[Person] = []
    for entity, per_role in (("us", 2), ("uk", 1), ("de", 1)):
        for role, rate in RATE_CARD[entity].items():
            for _ in range(per_role):
                n = len(people) + 1
                name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
                people.append(Person(ref=f"res-{n}", name=name, entity=entity, role=role, rate=rate))
    return people


def _client_name(rng: random.Random, entity: str, taken: set[str]) -> str:
    for _ in range(50):
        name = f"{rng.choice(CLIENT_STEMS)} {rng.choice(CLIENT_SUFFIXES[entity])}"
        if name not in taken:
            taken.add(name)
            return name
    name = f"{rng.choice(CLIENT_STEMS)} {len(taken) + 1} {rng.choice(CLIENT_SUFFIXES[entity])}"
    taken.add(name)
    return name


def _deal(
    rng: random.Random,
    options: Options,
    deal_ref: str,
    account_ref: str,
    entity: str,
    created: int,
    advanced: bool,
    people: list[Person],
    start_weekday: int,
    currency: str = "",
) -> list[Action]:
    actions = []
    anomalies = []
    service_line = rng.choice(SERVICE_LINES)
    if rng.random() < options.unknown_service_line:
        anomalies.append("unknown_service_line")
        service_line = rng.choice(UNKNOWN_SERVICE_LINES)
    billing_model = "Fixed Fee" if entity == "us" and rng.random() < 0.4 else "Time and Materials"
    staffing = STAFFING.get(service_line, STAFFING["Advisory"])
    scale = rng.choice((0.5, 0.75, 1.0, 1.25))
    plan: list[dict[str, Any]] = [{"role": role, "hours": int(hours * scale)} for role, hours in staffing]
    currency = currency or str(ENTITIES[entity]["currency"])
    amount = sum(p["hours"] * RATE_CARD[entity][p["role"]] for p in plan)
    amount = int(round(amount * rng.uniform(0.9, 1.1), -3))
    team = []
    for item in plan:
        candidates = [p for p in people if p.entity == entity and p.role == item["role"]]
        team.append(rng.choice(candidates).ref)
    stage_index = 3 if advanced else 0
    probability = STAGES[stage_index][1]
    close_day = created + (rng.randint(2, 12) if advanced else rng.randint(14, 45))
    # Deals already in negotiation when the story starts are mostly won: the firm's running book.
    won = rng.random() < (max(options.win_rate, 0.85) if advanced else options.win_rate)
    term_weeks = rng.randint(6, 16)
    actions.append(
        Action(
            created,
            rng.randint(9 * 60, 17 * 60),
            "deal_create",
            deal_ref,
            {
                "account": account_ref,
                "entity": entity,
                "name": f"{service_line} {DEAL_NOUN.get(entity, 'engagement')}",
                "stage": STAGES[stage_index][0],
                "probability": probability,
                "amount": amount,
                "currency": currency,
                "service_line": service_line,
                "billing_model": billing_model,
                "resource_plan": plan,
                "team": team,
                "close_day": close_day,
                "term_weeks": term_weeks,
                "anomalies": anomalies,
            },
        )
    )
    # Pipeline: the deal moves through the stages before it closes.
    day = created
    for index in range(stage_index + 1, len(STAGES)):
        day += rng.randint(2, 8)
        if day >= close_day or day >= options.days:
            break
        stage, probability = STAGES[index]
        actions.append(
            Action(
                day, rng.randint(9 * 60, 17 * 60), "deal_stage", deal_ref, {"stage": stage, "probability": probability}
            )
        )
    if close_day >= options.days:
        return actions  # still in the pipeline today
    if not won:
        actions.append(Action(close_day, rng.randint(9 * 60, 17 * 60), "deal_lost", deal_ref, {}))
        return actions
    # Contract starts the Monday after signature.
    weekday = (start_weekday + close_day) % 7
    contract_start_day = close_day + (7 - weekday)
    actions.append(
        Action(
            close_day,
            rng.randint(9 * 60, 17 * 60),
            "deal_won",
            deal_ref,
            {"contract_start_day": contract_start_day, "contract_end_day": contract_start_day + term_weeks * 7 - 1},
        )
    )
    if rng.random() < options.amendment_rate:
        amend_day = close_day + rng.randint(15, 45)
        if amend_day < options.days:
            actions.append(
                Action(
                    amend_day,
                    rng.randint(9 * 60, 17 * 60),
                    "deal_amend",
                    deal_ref,
                    {"amount_factor": rng.choice((1.1, 1.15, 1.2, 1.25)), "extend_weeks": rng.choice((2, 4, 6))},
                )
            )
    # Delivery: each Monday, last week's time (and now and then an expense) is approved.
    for week in range(term_weeks):
        week_start = contract_start_day + week * 7
        approve_day = week_start + 7
        if approve_day >= options.days:
            break
        entries = []
        for person_ref, item in zip(team, plan, strict=True):
            weekly = item["hours"] / term_weeks
            hours = max(4, int(round(weekly * rng.uniform(0.7, 1.2))))
            entries.append({"person": person_ref, "hours": min(hours, 45)})
        data: dict[str, Any] = {"week_start_day": week_start, "entries": entries, "anomalies": []}
        if rng.random() < 0.3:
            data["expense"] = {"category": rng.choice(("Travel", "Hotel", "Meals")), "amount": rng.randint(80, 900)}
            if rng.random() < options.mixed_currency:
                data["anomalies"].append("mixed_currency")
        minute = rng.randint(8 * 60, 12 * 60)
        if rng.random() < options.late_time:
            # Approved after the period closed: the week's time is approved in the next month.
            data["anomalies"].append("late_time")
            approve_day = _next_month_day(start_weekday, week_start, rng)
            if approve_day >= options.days:
                continue
        actions.append(Action(approve_day, minute, "week_time", deal_ref, data))
    return actions


def _next_month_day(start_weekday: int, week_start: int, rng: random.Random) -> int:
    """A day in a later month than the week's last day: 31 or more days after it always is
    (day numbers are relative; the simulator maps them to dates)."""
    return week_start + 6 + rng.randint(31, 36)


def _billing_runs(options: Options, start_weekday: int) -> list[Action]:
    """The PSA billing run every other Friday (both PSAs), and the finance team's daily round."""
    actions = []
    for day in range(options.days):
        weekday = (start_weekday + day) % 7
        if weekday == 4 and (day // 7) % 2 == 1:
            actions.append(Action(day, 16 * 60, "billing_run", "", {}))
        if weekday < 5:
            actions.append(Action(day, 17 * 60 + 30, "finance_round", "", {}))
    return actions


def _incidents(rng: random.Random, options: Options) -> list[Action]:
    actions = []
    for n in range(options.erp_outages):
        day = rng.randint(max(1, options.days // 4), max(2, options.days - 5))
        erp = rng.choice(("netsuite", "businesscentral"))
        actions.append(
            Action(day, rng.randint(9 * 60, 15 * 60), "erp_outage", f"outage-{n + 1}", {"sandbox": erp, "hours": 3})
        )
    for n in range(options.rate_limit_bursts):
        day = rng.randint(max(1, options.days // 3), max(2, options.days - 3))
        target = rng.choice(("netsuite", "businesscentral", "kantata"))
        actions.append(
            Action(
                day,
                rng.randint(9 * 60, 15 * 60),
                "rate_limit_burst",
                f"burst-{n + 1}",
                {"sandbox": target, "per_minute": 20, "hours": 2},
            )
        )
    return actions
