"""The validity of the X.509 certificate a value holds (a PKI issue's `certificate`), read with
`cryptography` when it is installed. A leaf with no imports from the rest of the bridge, so both
the engine and a provider can ask it. Never logs; returns nothing of the value but two times.
"""

from __future__ import annotations

import json
import re

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+-----END CERTIFICATE-----")
#: a value larger than this is not searched for a certificate
_MAX_BYTES = 1 << 20


def validity(value: bytes) -> tuple[float, float] | None:
    """(notBefore, notAfter) as epoch seconds of the first certificate in `value` (a JSON map's
    `certificate` field first, else the first PEM block), None when there is none or it cannot
    be read."""
    if len(value) > _MAX_BYTES:
        return None
    pem = _certificate_field(value)
    if pem is None:
        match = _PEM.search(value)
        pem = match.group(0) if match else None
    if pem is None:
        return None
    try:
        from cryptography import x509
    except ModuleNotFoundError:  # pragma: no cover - an extra; without it only the server's word counts
        return None
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
    return cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()


def _certificate_field(value: bytes) -> bytes | None:
    if not value.startswith(b"{"):
        return None
    try:
        doc = json.loads(value)
    except ValueError:
        return None
    text = doc.get("certificate") if isinstance(doc, dict) else None
    if not isinstance(text, str):
        return None
    match = _PEM.search(text.encode())
    return match.group(0) if match else None
