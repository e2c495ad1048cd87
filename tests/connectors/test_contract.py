"""The connector boundary, checked on the code itself (docs/engine.md, "Map of the parts";
docs/canonical.md): vendor knowledge only inside connectors/, flows and reconciliation speaking
canonical records, the sandboxes reached over HTTP only. Each rule walks the syntax trees, so a
comment or a message naming a vendor is not a violation and a real branch cannot hide."""

from __future__ import annotations

import ast
import os
import re
import subprocess
from pathlib import Path

import httpx
import pytest
from django.conf import settings

from connectors.canonical import KEYS, OPERATIONS, RECORDS, KeyFormat, capability
from connectors.errors import ValidationError
from connectors.models import Connection
from connectors.registry import CONNECTORS, connector_class
from connectors.sandboxes import SANDBOXES
from tests.helpers import PYTHON, free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
VENDORS = frozenset(CONNECTORS)
# Where vendor knowledge must not be: the engine, its flows and reconciliation, the workbench.
NO_VENDOR_BRANCHES = ("pscsync", "remediation")
CANONICAL_ONLY = ("pscsync/flows", "pscsync/reconciliation")
# A vendor's field names: Salesforce/Certinia custom fields and relations, NetSuite custom fields.
VENDOR_FIELD = re.compile(r"(__c|__r)\b|^(pse__|custbody|custcol|custentity)")


def _modules(*folders: str) -> list[Path]:
    found = []
    for folder in folders:
        found += [p for p in (ROOT / folder).rglob("*.py") if "migrations" not in p.parts]
    return sorted(found)


def _tree(path: Path) -> ast.AST:
    return ast.parse(path.read_text(), filename=str(path))


def _strings(node: ast.AST) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def vendor_branches(path: Path) -> list[str]:
    """Comparisons of something's `vendor` with one of our vendors' names (a database's vendor,
    "postgresql", is not one of ours)."""
    found = []
    for node in ast.walk(_tree(path)):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        names_vendor = any(
            (isinstance(s, ast.Attribute) and s.attr == "vendor") or (isinstance(s, ast.Name) and s.id == "vendor")
            for s in sides
        )
        if names_vendor and VENDORS & set(_strings(node)):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def vendor_fields(path: Path) -> list[str]:
    """String constants that are vendor field names, outside docstrings and messages (f-strings
    are messages for people; a docstring is prose)."""
    tree = _tree(path)
    prose = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            prose |= {id(n) for n in ast.walk(node)}
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            prose.add(id(body[0].value))
    return [
        f"{path.relative_to(ROOT)}:{n.lineno} {n.value!r}"
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in prose
        if VENDOR_FIELD.search(n.value)
    ]


def sandbox_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(_tree(path)):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
        if any(n == "connectors.sandboxes" or n.startswith("connectors.sandboxes.") for n in names):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_nothing_outside_the_connectors_branches_on_a_vendor() -> None:
    found = [hit for path in _modules(*NO_VENDOR_BRANCHES) for hit in vendor_branches(path)]
    assert found == [], "vendor knowledge belongs in its connector (a declared capability or a method)"


def test_flows_and_reconciliation_name_no_vendor_field() -> None:
    found = [hit for path in _modules(*CANONICAL_ONLY) for hit in vendor_fields(path)]
    assert found == [], "flows and reconciliation speak canonical records (docs/canonical.md)"


def test_the_engine_reaches_the_sandboxes_over_http_only() -> None:
    above = ("pscsync", "remediation", "dashboards", "api", "studio", "ops", "accounts")
    found = [hit for path in _modules(*above) for hit in sandbox_imports(path)]
    assert found == [], "sandbox addresses come from settings (SANDBOX_URLS); only the sandbox command imports them"


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


# Every part of the product: none of them imports the demo app (its firm, its simulator, its
# commands), so the product runs, and its tests hold, with demo/ deleted.
PRODUCT = ("pscsync", "connectors", "remediation", "dashboards", "studio", "api", "ops", "accounts")


def demo_imports(path: Path) -> list[str]:
    names = sorted(_imports(path))
    return [f"{path.relative_to(ROOT)}: {n}" for n in names if n == "demo" or n.startswith("demo.")]


def test_the_product_does_not_import_the_demo() -> None:
    found = [hit for path in _modules(*PRODUCT) for hit in demo_imports(path)]
    assert found == [], "the demo firm is an app beside the engine (docs/engine.md); the engine never imports it"


def test_the_connectors_import_nothing_of_the_engine() -> None:
    """docs/engine.md: the vendor modules and the contract stand below the engine. (The connection
    pages and the webhook endpoint, connectors/{models,forms,views,webhooks}.py, may use it.)"""
    below = [p for p in (ROOT / "connectors").glob("*.py") if p.stem not in {"models", "forms", "views", "webhooks"}]
    engine = ("pscsync", "remediation", "dashboards", "api", "studio", "connectors.sandboxes")
    found = {
        f"{p.relative_to(ROOT)}: {name}"
        for p in below
        for name in _imports(p)
        if any(name == e or name.startswith(e + ".") for e in engine)
    }
    assert found == set()


def test_the_checks_catch_what_they_are_for(tmp_path: Path) -> None:
    """The rules above find a real branch, field and import (else they could pass by finding nothing)."""
    sample = ROOT / "pscsync" / "_contract_sample.py"
    sample.write_text(
        '"""A docstring naming pse__Proj__c is prose."""\n'
        "from connectors.sandboxes import sandbox_url\n"
        "from demo.firm import firm_connections_save\n"
        "def f(psa, db):\n"
        '    """So is this: custbody_x."""\n'
        '    if db.vendor == "postgresql":\n'
        "        pass\n"
        '    label = f"field {psa.x} pse__Amount__c"\n'
        '    return psa.vendor == "certinia" and {"pse__Project__c": 1}\n'
    )
    try:
        assert vendor_branches(sample) == ["pscsync/_contract_sample.py:9"]
        assert [h.split(" ", 1)[1] for h in vendor_fields(sample)] == ["'pse__Project__c'"]
        assert sandbox_imports(sample) == ["pscsync/_contract_sample.py:2"]
        assert demo_imports(sample) == ["pscsync/_contract_sample.py: demo.firm"]
    finally:
        sample.unlink()


@pytest.mark.parametrize("vendor", sorted(VENDORS))
def test_every_capability_is_well_formed(vendor: str) -> None:
    for purpose, declared in connector_class(vendor).capabilities.items():
        assert declared.record in RECORDS, (purpose, declared.record)
        assert declared.operations and declared.operations <= OPERATIONS, purpose
        assert declared.entity, purpose
        assert isinstance(declared.key_format, KeyFormat)


def test_docs_list_every_declared_capability() -> None:
    text = (ROOT / "docs" / "canonical.md").read_text()
    for vendor in sorted(VENDORS):
        for purpose, declared in connector_class(vendor).capabilities.items():
            row = f"| {vendor} | {purpose} | `{declared.entity}` | {', '.join(sorted(declared.operations))} |"
            assert row in text, f"docs/canonical.md does not list {vendor} {purpose}: {row}"


def test_keys_are_built_and_read_back_by_their_format() -> None:
    # Worked by hand from docs/flows.md: the milestone of opportunity 006A, number 3.
    assert KEYS["milestone"](deal="006A", number=3) == "M-006A-3"
    assert KEYS["milestone"].parse("M-006A-3") == {"deal": "006A", "number": "3"}
    assert KEYS["budget"].parse("B-006A-v2") == {"deal": "006A", "version": "2"}
    assert KEYS["invoice"].parse("X-1") is None
    assert connector_class("kantata").invoice_key.parse("I-K77") == {"batch": "77"}
    assert connector_class("netsuite").capabilities["contract"].key_format(deal="006A") == "SO-006A"
    assert connector_class("businesscentral").capabilities["contract"].key_format(deal="006A") == "P-006A"


def test_asking_a_connector_for_what_it_does_not_hold_names_the_gap() -> None:
    with pytest.raises(ValidationError, match=r"NetSuite \(US\) \(netsuite\) cannot hold a milestone"):
        capability(Connection(vendor="netsuite", name="NetSuite (US)"), "milestone")


def test_the_engine_looks_for_each_sandbox_where_it_listens_by_default() -> None:
    assert settings.SANDBOX_DEFAULT_PORTS == {name: port for name, (_, port) in SANDBOXES.items()}


def test_a_sandbox_starts_as_the_readme_says_on_a_fresh_machine(tmp_path: Path) -> None:
    """`python manage.py sandbox <name> --port N` with nothing set: no SECRET_KEY, no database, no
    credentials key (it used to stop at "SECRET_KEY is required")."""
    port = free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PSCSYNC_VAR_DIR": str(tmp_path)}
    log = (tmp_path / "sandbox.log").open("w")
    process = subprocess.Popen(
        [PYTHON, str(ROOT / "manage.py"), "sandbox", "kantata", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port)
        answer = httpx.post(f"http://127.0.0.1:{port}/_sandbox/reset", timeout=5)
        assert answer.status_code == 200
        assert (tmp_path / "sandboxes" / "kantata").is_dir()  # its state under PSCSYNC_VAR_DIR
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()
    assert "SECRET_KEY" not in (tmp_path / "sandbox.log").read_text()
