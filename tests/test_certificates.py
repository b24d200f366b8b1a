"""Reading a certificate's validity from a value (bridge/certificates.py): the `certificate` field
of a JSON map (a PKI issue) before any other PEM block, a bare PEM chain's first certificate, and
None for no certificate, a broken one, or a value too large to search."""

from __future__ import annotations

import datetime
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bridge.certificates import validity

EPOCH = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def _pem(days_from: int, days_to: int) -> str:
    """A self-signed certificate valid from EPOCH + days_from to EPOCH + days_to, as PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test.internal")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(EPOCH + datetime.timedelta(days=days_from))
            .not_valid_after(EPOCH + datetime.timedelta(days=days_to))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _days(days: int) -> float:
    return (EPOCH + datetime.timedelta(days=days)).timestamp()


def test_first_pem_block_of_a_chain() -> None:
    """A PEM chain (leaf first) gives the leaf's notBefore and notAfter as epoch seconds."""
    chain = (_pem(0, 30) + _pem(-100, 1000)).encode()
    assert validity(chain) == (_days(0), _days(30))


def test_certificate_field_of_a_json_map_comes_first() -> None:
    """In a PKI issue's JSON, `certificate` is read even when the CA's PEM comes earlier in the text."""
    value = json.dumps({"issuing_ca": _pem(-100, 1000), "certificate": _pem(1, 2), "private_key": "..."}).encode()
    assert validity(value) == (_days(1), _days(2))


@pytest.mark.parametrize("value", [
    b"no certificate here",
    b'{"certificate": 5}',
    b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
    b"{not json -----BEGIN CERTIFICATE----- x",
])
def test_no_readable_certificate_is_none(value: bytes) -> None:
    """A value with no certificate, or one that does not parse, has no validity (never an exception)."""
    assert validity(value) is None


def test_a_value_past_one_mebibyte_is_not_searched() -> None:
    """A value larger than 1 MiB is not searched, even when it begins with a certificate."""
    pem = _pem(0, 30).encode()
    assert validity(pem + b" " * (1 << 20)) is None
    assert validity(pem + b" " * 1000) == (_days(0), _days(30))
