"""Signatures: tampering, unknown and expired keys are refused; rotation keeps devices verifying."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from contract.signing import SignatureError, SignedDocument, SigningKey, TrustStore

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


class Doc(msgspec.Struct, frozen=True):
    name: str
    version: int
    max_current_ua: float


def test_sign_and_verify_round_trip() -> None:
    key = SigningKey.generate()
    doc = Doc("starter", 3, 350.0)
    store = TrustStore([key.trusted()])
    assert store.verify_as(key.sign(doc), NOW, Doc) == doc


@given(st.binary(min_size=1, max_size=8), st.integers(min_value=0, max_value=200))
def test_any_tampering_is_refused(garbage: bytes, position: int) -> None:
    key = SigningKey.generate()
    signed = key.sign(Doc("starter", 3, 350.0))
    payload = bytearray(base64.b64decode(signed.payload))
    i = position % len(payload)
    payload[i : i + len(garbage)] = garbage
    if bytes(payload) == base64.b64decode(signed.payload):
        return
    forged = SignedDocument(signed.key_id, signed.signature, base64.b64encode(bytes(payload)).decode())
    with pytest.raises(SignatureError, match="does not match"):
        TrustStore([key.trusted()]).verify(forged, NOW)


def test_unknown_key_is_refused_and_named() -> None:
    signer, trusted = SigningKey.generate(), SigningKey.generate()
    with pytest.raises(SignatureError, match="unknown key"):
        TrustStore([trusted.trusted()]).verify(signer.sign({"a": 1}), NOW)


def test_expired_and_not_yet_valid_keys_are_refused() -> None:
    key = SigningKey.generate()
    doc = key.sign({"a": 1})
    with pytest.raises(SignatureError, match="expired"):
        TrustStore([key.trusted(not_after=NOW - timedelta(days=1))]).verify(doc, NOW)
    with pytest.raises(SignatureError, match="not valid before"):
        TrustStore([key.trusted(not_before=NOW + timedelta(days=1))]).verify(doc, NOW)


def test_rotation_device_trusts_old_and_new_during_overlap() -> None:
    old, new = SigningKey.generate(), SigningKey.generate()
    cutover = NOW + timedelta(days=30)
    # phase 1: devices receive the new public key while the old one still signs
    store = TrustStore([old.trusted(not_after=cutover), new.trusted(not_before=NOW - timedelta(days=1))])
    assert store.verify(old.sign({"v": 1}), NOW)
    assert store.verify(new.sign({"v": 2}), NOW)
    # phase 2: after the cutover only the new key verifies
    later = cutover + timedelta(days=1)
    assert store.verify(new.sign({"v": 3}), later)
    with pytest.raises(SignatureError, match="expired"):
        store.verify(old.sign({"v": 4}), later)


def test_private_key_stays_out_of_repr_and_round_trips_pem() -> None:
    key = SigningKey.generate()
    assert "PRIVATE" not in repr(key) and "***" in repr(key)
    again = SigningKey.from_pem(key.to_pem())
    assert again.key_id == key.key_id
    assert TrustStore([key.trusted()]).verify(again.sign({"x": 1}), NOW)


def test_payload_of_wrong_shape_is_refused() -> None:
    key = SigningKey.generate()
    with pytest.raises(SignatureError, match="does not match Doc"):
        TrustStore([key.trusted()]).verify_as(key.sign({"name": "x"}), NOW, Doc)
