"""Junk at the connector boundary (hypothesis): whatever a vendor sends, a body or a record of
another shape ends as a classified error (MalformedRecord, or WebhookRejected for a webhook
body), never a KeyError, TypeError or ValueError; and a record its connector's declared shape
accepts is read into canonical terms without raising.

No HTTP here: these are the functions each connector runs on an answer it has received.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors import businesscentral as bc
from connectors import dynamicsfinance as d365
from connectors import kantata, netsuite
from connectors import salesforce as sf
from connectors.errors import WebhookRejected
from connectors.models import Connection
from connectors.schema import DateText, MalformedRecord, NumberText, payload_check

# Derandomized: every run tries the same examples, so a budget checked once to catch known bugs
# keeps catching them (re-injected, each failed the test at these budgets: an empty required id
# read as an id, D365 without its webhook refusal, a BC invoice shape with its id optional).
FUZZ = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True, database=None
)
# The readers' tests need the rarer conjunction (a record that passes and a field it forgot).
FUZZ_READERS = settings(FUZZ, max_examples=250)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["2026-12-06", "2026-13-45", "12/6/2026", "1.5", "abc", "", "0", "1900-01-01T00:00:00Z"]),
)
junk = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def fitting(spec: tuple[Any, ...]) -> st.SearchStrategy[Any]:
    """Values of the types a declared field allows (numbers as number text, dates as ISO text)."""
    by_type: dict[Any, st.SearchStrategy[Any]] = {
        str: st.text(max_size=10),
        int: st.integers(min_value=-(10**9), max_value=10**9),
        float: st.floats(allow_nan=False, allow_infinity=False, width=32),
        bool: st.booleans(),
        dict: st.dictionaries(st.text(max_size=6), scalars, max_size=3),
        list: st.lists(st.dictionaries(st.text(max_size=6), scalars, max_size=3), max_size=3),
        NumberText: st.decimals(allow_nan=False, allow_infinity=False, places=2).map(str),
        DateText: st.dates().map(lambda d: d.isoformat()),
    }
    inner = spec[2] if len(spec) > 2 else None
    if inner is not None and list in spec[0]:
        return st.lists(near(inner), max_size=3)
    if inner is not None and dict in spec[0]:
        return near(inner)
    return st.one_of(*(by_type[t] for t in spec[0] if t in by_type))


def near(shape: Mapping[str, tuple[Any, ...]], reads: tuple[str, ...] = ()) -> st.SearchStrategy[dict[str, Any]]:
    """Records that look like the vendor's: the shape's own fields, each holding a value of its
    declared type or junk, so most examples reach the reader and some break the shape; and the
    fields the reader reads (`reads`, listed here from the reader's code, not from the shape),
    holding junk when the shape does not declare them, which is what a shape that forgot a
    field the reader needs lets through."""
    optional = {name: st.one_of(fitting(spec), fitting(spec), fitting(spec), junk) for name, spec in shape.items()}
    return st.fixed_dictionaries({}, optional={**{name: junk for name in reads}, **optional})


# The fields each ledger reader reads, from connectors/<vendor>.py.
NS_INVOICE_READS = (
    "id", "tranId", "externalId", "custbody_project_key", "custbody_psa_batch", "entity", "currency", "status",
    "approvalStatus", "total", "amountRemaining", "taxTotal", "tranDate", "dueDate",
)  # fmt: skip
NS_PAYMENT_READS = ("id", "tranDate", "tranId", "apply")
BC_INVOICE_READS = (
    "id", "number", "externalDocumentNumber", "customerPurchaseOrderReference", "customerNumber", "customerName",
    "customerId", "currencyCode", "status", "invoiceDate", "dueDate", "postingDate", "totalAmountIncludingTax",
    "totalTaxAmount", "remainingAmount",
)  # fmt: skip
BC_PAYMENT_READS = ("id", "appliesToInvoiceId", "amount", "postingDate", "documentNumber", "externalDocumentNumber")
D365_HEADER_READS = (
    "InvoiceIdentifier", "IsPosted", "CustomerReference", "CustomerRequisition", "CustomerAccount", "CurrencyCode",
    "InvoiceDate", "DueDate",
)  # fmt: skip
D365_POSTED_READS = ("TotalInvoiceAmount", "TotalTaxAmount", "InvoiceNumber", "InvoiceDate")
D365_LINE_READS = ("Quantity", "UnitPrice", "SalesTaxAmount")


def only_classified(call, *args: Any, **kwargs: Any) -> Any:
    try:
        return call(*args, **kwargs)
    except (MalformedRecord, WebhookRejected):
        return None


# Webhook bodies -------------------------------------------------------------------------------
def _connector(cls: type, vendor: str) -> Any:
    return cls(Connection(vendor=vendor, base_url="https://example.invalid", name=vendor))


@FUZZ
@given(st.one_of(junk.map(lambda v: json.dumps(v).encode()), st.binary(max_size=64)))
def test_junk_webhook_bodies_are_refused_in_words_by_every_vendor(body: bytes) -> None:
    for cls, vendor in (
        (sf.SalesforceConnector, "salesforce"),
        (bc.BusinessCentralConnector, "businesscentral"),
        (netsuite.NetSuiteConnector, "netsuite"),
        (kantata.KantataConnector, "kantata"),
        (d365.DynamicsFinanceConnector, "dynamicsfinance"),
    ):
        connector = _connector(cls, vendor)
        try:
            connector.parse_webhook(event_id="fuzz", body=body)
        except WebhookRejected as refused:
            assert refused.status in (400, 404) and refused.message


@FUZZ
@given(near(sf.CHANGE_EVENT_SHAPE) | junk)
def test_a_salesforce_change_event_of_any_shape_is_read_or_refused(message: Any) -> None:
    changes = only_classified(sf.change_event_changes, message)
    for change in changes or []:
        assert change.business_key and change.occurred_at.tzinfo is not None


# Pages and records of reads -------------------------------------------------------------------
@FUZZ
@given(junk, st.sampled_from(sorted(kantata.RECORD_SHAPES)))
def test_a_kantata_answer_of_any_shape_is_read_or_refused(body: Any, collection: str) -> None:
    shaped = {"results": [{"key": collection, "id": "1"}], collection: {"1": body}}
    for answer in (body, shaped):
        only_classified(kantata.records_of, answer, collection)


@FUZZ
@given(junk, st.sampled_from(sorted(bc.RECORD_SHAPES)))
def test_a_business_central_page_of_any_shape_is_read_or_refused(record: Any, name: str) -> None:
    connector = _connector(bc.BusinessCentralConnector, "businesscentral")
    for body in (record, {"value": [record]}, {"value": record}):
        only_classified(connector.page_checked, body, bc.RECORD_SHAPES[name], what="Business Central sent a record")


@FUZZ
@given(junk, st.sampled_from(sorted(d365.RECORD_SHAPES)))
def test_a_dynamics_page_of_any_shape_is_read_or_refused(record: Any, name: str) -> None:
    connector = _connector(d365.DynamicsFinanceConnector, "dynamicsfinance")
    for body in (record, {"value": [record]}, {"@odata.nextLink": record, "value": []}):
        only_classified(connector.page_checked, body, d365.RECORD_SHAPES[name], what="D365 sent a record")


@FUZZ
@given(junk)
def test_junk_against_any_declared_shape_is_a_malformed_record_or_passes(payload: Any) -> None:
    for shape in (
        sf.OPPORTUNITY_SHAPE,
        sf.QUERY_SHAPE,
        netsuite.INVOICE_SHAPE,
        netsuite.PAYMENT_SHAPE,
        netsuite.SUITEQL_PAGE_SHAPE,
        kantata.ENVELOPE_SHAPE,
    ):
        only_classified(payload_check, payload, shape, what="A vendor sent a record")


# A record its shape accepts is readable --------------------------------------------------------
@FUZZ_READERS
@given(near(netsuite.INVOICE_SHAPE, NS_INVOICE_READS), near(netsuite.PAYMENT_SHAPE, NS_PAYMENT_READS))
def test_a_netsuite_invoice_and_payment_their_shapes_accept_are_read_without_raising(invoice, payment) -> None:
    invoice = only_classified(payload_check, invoice, netsuite.INVOICE_SHAPE, what="NetSuite sent an invoice")
    payment = only_classified(payload_check, payment, netsuite.PAYMENT_SHAPE, what="NetSuite sent a payment")
    applied = netsuite.payment_applications(payment) if payment is not None else []
    if invoice is not None:
        read = netsuite.ledger_invoice(invoice, payments=applied)
        assert read.status and read.id


@FUZZ_READERS
@given(
    near(bc.RECORD_SHAPES["salesInvoices"], BC_INVOICE_READS),
    near(bc.RECORD_SHAPES["customerPayments"], BC_PAYMENT_READS),
)
def test_a_business_central_invoice_and_payment_their_shapes_accept_are_read_without_raising(invoice, payment):
    invoice = only_classified(payload_check, invoice, bc.RECORD_SHAPES["salesInvoices"], what="BC sent an invoice")
    payment = only_classified(payload_check, payment, bc.RECORD_SHAPES["customerPayments"], what="BC sent a payment")
    applied = [bc.payment_application(payment)] if payment is not None else []
    if invoice is not None:
        assert bc.ledger_invoice(invoice, payments=[p for p in applied if p]).id


@FUZZ_READERS
@given(
    near(d365.RECORD_SHAPES["FreeTextInvoiceHeaders"], D365_HEADER_READS),
    near(d365.RECORD_SHAPES["SalesInvoiceHeadersV2"], D365_POSTED_READS),
    st.lists(near(d365.RECORD_SHAPES["FreeTextInvoiceLines"], D365_LINE_READS), max_size=3),
)
def test_a_dynamics_invoice_its_shapes_accept_is_read_without_raising(header, posted, lines) -> None:
    shapes = d365.RECORD_SHAPES
    header = only_classified(payload_check, header, shapes["FreeTextInvoiceHeaders"], what="D365 sent an invoice")
    posted = only_classified(payload_check, posted, shapes["SalesInvoiceHeadersV2"], what="D365 sent a posted one")
    lines = [
        line
        for line in (
            only_classified(payload_check, x, shapes["FreeTextInvoiceLines"], what="D365 sent a line") for x in lines
        )
        if line is not None
    ]
    if header is not None:
        assert d365.ledger_invoice(header, posted=posted, lines=lines).id
