"""Pure parts of the payments domain: the emulator reads exactly what the stripe library encodes, the
webhook signature scheme, what a Checkout Session means for access, and what clients are told."""

from __future__ import annotations

import time
from types import SimpleNamespace
from urllib.parse import parse_qsl, urlencode

import pytest
import stripe
from stripe._encode import _api_encode

from server.accounts.access import has_access, reported_status
from server.payments.emulator import _nest, sign
from server.payments.service import _session_outcome, _user_of

PARAMS = {
    "mode": "payment", "payment_method_types": ["card"], "client_reference_id": "u-1",
    "line_items": [{"quantity": 1, "price_data": {"currency": "usd", "unit_amount": 50,
                                                  "product_data": {"name": "Napalm Sky access"}}}],
    "metadata": {"userId": "u-1", "userName": "Ada [the] first"}, "created": {"gte": 1700000000},
}


def _strings(value):
    if isinstance(value, dict):
        return {k: _strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strings(v) for v in value]
    return str(value)


def test_emulator_parses_the_librarys_form_encoding():
    body = urlencode(list(_api_encode(PARAMS)))
    assert _nest(parse_qsl(body)) == _strings(PARAMS)
    assert _nest([("expand[]", "a"), ("expand[]", "b")]) == {"expand": ["a", "b"]}


def test_emulator_signatures_verify_with_the_library():
    payload = '{"id": "evt_1", "object": "event", "type": "ping", "data": {"object": {}}}'
    header = sign("whsec_x", payload)
    assert stripe.Webhook.construct_event(payload, header, "whsec_x").id == "evt_1"
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload, header, "whsec_other")
    with pytest.raises(stripe.SignatureVerificationError):  # older than the 300 s tolerance
        stripe.Webhook.construct_event(payload, sign("whsec_x", payload, int(time.time()) - 301), "whsec_x")


@pytest.mark.parametrize(("session", "event", "outcome"), [
    ({"status": "complete", "payment_status": "paid"}, "checkout.session.completed", "paid"),
    ({"status": "complete", "payment_status": "no_payment_required"}, None, "paid"),
    ({"status": "complete", "payment_status": "unpaid"}, "checkout.session.completed", "processing"),
    ({"status": "complete", "payment_status": "unpaid"}, "checkout.session.async_payment_succeeded", "paid"),
    ({"status": "complete", "payment_status": "unpaid"}, "checkout.session.async_payment_failed", "failed"),
    ({"status": "expired", "payment_status": "unpaid"}, "checkout.session.expired", "expired"),
    ({"status": "open", "payment_status": "unpaid"}, None, None),
])
def test_what_a_session_means(session, event, outcome):
    assert _session_outcome(session, event) == outcome


def test_user_of_a_session():
    uid = "0b7a4f0e-7d1e-4c52-9a55-2f9a3c1e0d11"
    assert str(_user_of({"client_reference_id": uid})) == uid
    assert str(_user_of({"client_reference_id": None, "metadata": {"userId": uid}})) == uid
    assert _user_of({"client_reference_id": "not-a-uuid"}) is None
    assert _user_of({"metadata": {}}) is None


@pytest.mark.parametrize(("stored", "paywall", "reported", "access"), [
    ("unpaid", True, "unpaid", False), ("unpaid", False, "qr_grace_period", True),
    ("paid", False, "paid", True), ("qr_verified", True, "qr_verified", True),
    ("qr_grace_period", True, "qr_grace_period", True),
])
def test_reported_status_never_claims_a_payment(stored, paywall, reported, access):
    deps = SimpleNamespace(settings=SimpleNamespace(require_payment=paywall))
    assert reported_status(deps, stored) == reported  # type: ignore[arg-type]
    assert has_access(deps, stored) is access  # type: ignore[arg-type]
