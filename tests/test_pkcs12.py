"""The work bound on a PKCS#12 bundle (bridge/engine/pkcs12.py), on bundles `cryptography` makes:
an iteration count past MAX_ITERATIONS in the MAC or in a bag's PBKDF2 is refused before OpenSSL
runs it; ordinary bundles, BER and bytes this walk cannot parse pass through to the real parser."""

from __future__ import annotations

import datetime
import functools
import re

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import PrivateFormat, pkcs12
from cryptography.x509.oid import NameOID

from bridge.engine.pkcs12 import MAX_ITERATIONS, TooMuchWork, check_work
from tests.der import with_mac_iterations

#: the DER INTEGER 65536, the PBKDF2 count the encrypted bundle is made with
_ROUNDS_65536 = bytes.fromhex("0203010000")


@functools.cache
def _key_and_cert() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pkcs12-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return key, cert


def _plain() -> bytes:
    key, cert = _key_and_cert()
    return pkcs12.serialize_key_and_certificates(b"t", key, cert, None, serialization.NoEncryption())


def _encrypted() -> bytes:
    """Key and certificate bags each under PBES2/PBKDF2 with 65536 rounds (a 3-byte INTEGER to patch)."""
    key, cert = _key_and_cert()
    encryption = (PrivateFormat.PKCS12.encryption_builder().kdf_rounds(65536)
                  .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC).hmac_hash(hashes.SHA256()).build(b"pw"))
    return pkcs12.serialize_key_and_certificates(b"t", key, cert, None, encryption)


def _tlv(tag: int, content: bytes) -> bytes:
    size = len(content)
    length = bytes([size]) if size < 0x80 else bytes([0x80 | 2]) + size.to_bytes(2, "big")
    return bytes([tag]) + length + content


def test_bundles_cryptography_makes_pass() -> None:
    """A password-less bundle and a PBES2-encrypted one (65536 rounds) ask for no more than allowed."""
    check_work(_plain())
    check_work(_encrypted())


@pytest.mark.parametrize(("iterations", "refused"), [(MAX_ITERATIONS, False), (MAX_ITERATIONS + 1, True),
                                                     (2**31 - 1, True)])
def test_mac_iterations_bounded(iterations: int, refused: bool) -> None:
    """A MAC count of MAX_ITERATIONS passes; one more, or 2^31-1, is TooMuchWork naming the limit."""
    bundle = with_mac_iterations(_plain(), iterations)
    if not refused:
        check_work(bundle)
        return
    with pytest.raises(TooMuchWork, match=f"more than {MAX_ITERATIONS} key-derivation iterations"):
        check_work(bundle)


@pytest.mark.parametrize("which", [0, 1])
def test_each_bags_pbkdf2_count_is_checked(which: int) -> None:
    """A PBKDF2 count past the limit in either encrypted bag (DER inside OCTET STRINGs) is refused."""
    bundle = _encrypted()
    spots = [m.start() for m in re.finditer(re.escape(_ROUNDS_65536), bundle)]
    assert len(spots) == 2
    at = spots[which]
    at_limit = bundle[:at] + bytes.fromhex("02030f4240") + bundle[at + 5:]
    check_work(at_limit)
    with pytest.raises(TooMuchWork):
        check_work(bundle[:at] + bytes.fromhex("02030f4241") + bundle[at + 5:])


def test_ber_indefinite_length_is_walked() -> None:
    """A BER indefinite-length SEQUENCE's salt and count are checked, and elements after its end too."""
    salt, small, big = _tlv(0x04, b"salt"), _tlv(0x02, b"\x08\x00"), _tlv(0x02, b"\x7f\xff\xff")
    check_work(b"\x30\x80" + salt + small + b"\x00\x00")
    with pytest.raises(TooMuchWork):
        check_work(b"\x30\x80" + salt + big + b"\x00\x00")
    with pytest.raises(TooMuchWork):
        check_work(_tlv(0x30, b"\x30\x80" + salt + small + b"\x00\x00" + salt + big))


def test_a_count_not_after_a_salt_is_not_an_iteration_count() -> None:
    """A big INTEGER that does not follow an OCTET STRING (a serial number, a version) is no work."""
    check_work(_tlv(0x30, _tlv(0x02, b"\x7f\xff\xff\xff") + _tlv(0x04, b"salt")))


@pytest.mark.parametrize("data", [
    b"", b"\x30", b"\x30\x85\x00\x00\x00\x00\x01", b"\x1f\x01\x00", b"not a bundle at all",
    b"\x04\x80" + _tlv(0x04, b"salt") + _tlv(0x02, b"\x7f\xff\xff") + b"\x00\x00",  # primitive, indefinite
    b"\x30\x80" * 5000,  # deeper than any bundle: no RecursionError
])
def test_unparseable_bytes_are_left_to_the_real_parser(data: bytes) -> None:
    """Truncated, oversized, high-tag, text, primitive-indefinite and too-deep input raise nothing here."""
    check_work(data)


def test_trailing_bytes_do_not_hide_a_big_count() -> None:
    """A bundle with an unparseable tail still has its MAC count refused (the walk checks as it goes)."""
    bundle = with_mac_iterations(_plain(), 2**31 - 1)
    with pytest.raises(TooMuchWork):
        check_work(bundle + b"\x30\x05")
