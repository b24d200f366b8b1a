"""Turn a fetched value into file content: pick a JSON `key`, decode `encoding`, convert `format`.

The same for every provider, so `key` and `encoding` mean one thing everywhere. Errors name the
secret's ref and the key, never the value.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from bridge.engine.pkcs12 import TooMuchWork, check_work
from bridge.errors import ExtractError
from bridge.provider import Fetched

__all__ = ["ExtractError", "extract", "to_pem"]


def extract(fetched: Fetched, *, key: str | None, encoding: str | None, fmt: str | None) -> bytes:
    data = fetched.value
    if key is not None:
        data = _pick(data, key)
    if encoding == "base64":
        try:
            data = base64.b64decode(b"".join(data.split()), validate=True)
        except (binascii.Error, ValueError):
            raise ExtractError("value is not valid base64 (encoding: base64)") from None
    if fmt == "pem":
        data = to_pem(data, fetched.content_type)
    return data


def _pick(data: bytes, key: str) -> bytes:
    try:
        doc: Any = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ExtractError(f"value is not a JSON object, so key {key!r} cannot be picked") from None
    if not isinstance(doc, dict):
        raise ExtractError(f"value is not a JSON object, so key {key!r} cannot be picked")
    if key not in doc:
        raise ExtractError(f"key {key!r} not in the secret (it has {len(doc)} keys)")
    return field_bytes(doc[key])


def field_bytes(field: Any) -> bytes:
    """One field of a JSON map as file content: a string as is, anything else as compact JSON."""
    if isinstance(field, str):
        return field.encode()
    return json.dumps(field, separators=(",", ":")).encode()


def to_pem(data: bytes, content_type: str | None) -> bytes:
    """PKCS#12 (raw or base64) to PEM: private key, then certificate, then the chain."""
    if content_type == "application/x-pem-file" or data.lstrip().startswith(b"-----BEGIN"):
        return data
    try:  # lazy: only certificates need it
        from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, pkcs12
    except ModuleNotFoundError:
        raise ExtractError("format: pem needs the cryptography package (pip install cryptography)") from None

    try:
        raw = data if data[:1] == b"\x30" else base64.b64decode(b"".join(data.split()), validate=True)
        check_work(raw)  # before OpenSSL runs the iterations the bundle asks for
        key, cert, chain = pkcs12.load_key_and_certificates(raw, None)
    except TooMuchWork as exc:
        raise ExtractError(f"{exc} (format: pem)") from None
    except (ValueError, binascii.Error):
        raise ExtractError("value is neither PEM nor a password-less PKCS#12 bundle (format: pem)") from None
    parts = []
    if key is not None:
        parts.append(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    for c in ([cert] if cert is not None else []) + list(chain or []):
        parts.append(c.public_bytes(Encoding.PEM))
    return b"".join(parts)
