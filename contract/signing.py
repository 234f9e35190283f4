"""Signed documents (treatment protocols, firmware manifests): Ed25519 over the exact payload bytes.

A `SignedDocument` carries the payload (canonical JSON, base64), the id of the key that signed it and
the signature. A device verifies against its `TrustStore`: the key must be known, inside its validity
window, and the signature must match. Key rotation: ship the new public key to devices first (a store
may hold several keys), then sign with the new key, then retire the old one; during the overlap both
verify. Private keys never enter this module as text to log: `SigningKey.__repr__` hides them.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime
from typing import Any

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from contract.errors import ContractError, Reason


class SignatureError(ContractError):
    """A document whose signature cannot be trusted. Permanent for these bytes."""

    def __init__(self, detail: str) -> None:
        super().__init__(Reason.SCHEMA, f"signature: {detail}")


class SignedDocument(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    key_id: str
    signature: str  # base64 of the 64-byte Ed25519 signature
    payload: str  # base64 of the canonical JSON bytes that were signed


class TrustedKey(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    key_id: str
    public_key: str  # base64 of the 32 raw bytes
    not_before: datetime | None = None
    not_after: datetime | None = None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def key_id_of(public_raw: bytes) -> str:
    return "ed25519:" + hashlib.sha256(public_raw).hexdigest()[:16]


def canonical(obj: Any) -> bytes:
    """Deterministic JSON: sorted keys, no whitespace, so the same document always signs the same."""
    return msgspec.json.encode(msgspec.to_builtins(obj), order="sorted")


class SigningKey:
    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public_raw = raw
        self.key_id = key_id_of(raw)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, pem: bytes) -> SigningKey:
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("the signing key must be an Ed25519 private key in PEM (PKCS8)")
        return cls(key)

    def to_pem(self) -> bytes:
        return self._private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def trusted(self, not_before: datetime | None = None, not_after: datetime | None = None) -> TrustedKey:
        return TrustedKey(self.key_id, _b64(self.public_raw), not_before, not_after)

    def sign(self, obj: Any) -> SignedDocument:
        payload = canonical(obj)
        return SignedDocument(self.key_id, _b64(self._private.sign(payload)), _b64(payload))

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.key_id!r}, private=***)"


class TrustStore:
    def __init__(self, keys: list[TrustedKey] | tuple[TrustedKey, ...]) -> None:
        self._keys = {k.key_id: k for k in keys}

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def verify(self, doc: SignedDocument, now: datetime) -> bytes:
        """Return the signed payload bytes, or raise SignatureError saying why they are not trusted."""
        key = self._keys.get(doc.key_id)
        if key is None:
            raise SignatureError(f"unknown key {doc.key_id!r} (trusted: {', '.join(self.key_ids) or 'none'})")
        if key.not_before is not None and now < key.not_before:
            raise SignatureError(f"key {doc.key_id} is not valid before {key.not_before.isoformat()}")
        if key.not_after is not None and now > key.not_after:
            raise SignatureError(f"key {doc.key_id} expired at {key.not_after.isoformat()}")
        try:
            payload = base64.b64decode(doc.payload, validate=True)
            signature = base64.b64decode(doc.signature, validate=True)
            Ed25519PublicKey.from_public_bytes(base64.b64decode(key.public_key)).verify(signature, payload)
        except (InvalidSignature, ValueError) as exc:
            raise SignatureError(f"signature does not match the payload for key {doc.key_id}") from exc
        return payload

    def verify_as(self, doc: SignedDocument, now: datetime, kind: type[Any]) -> Any:
        """Verify, then decode the payload strictly into `kind`."""
        try:
            return msgspec.json.decode(self.verify(doc, now), type=kind)
        except msgspec.ValidationError as exc:
            raise SignatureError(f"signed payload does not match {kind.__name__}: {exc}") from exc
