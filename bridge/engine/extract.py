"""Turn a fetched value into file content: pick a JSON `key`, decode `encoding`, convert `format`
(`pem`: key, certificate and chain in one PEM; `pem-key`, `pem-cert`, `pem-chain`, `pem-fullchain`:
one part of it, as CSI's and ESO's users split a certificate into files).

The same for every provider, so `key` and `encoding` mean one thing everywhere. Errors name the
secret's ref and the key, never the value.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from bridge.engine.pkcs12 import TooMuchWork, check_work
from bridge.errors import ExtractError
from bridge.provider import Fetched

__all__ = ["PEM_FORMATS", "ExtractError", "extract", "to_pem"]

#: `format` values: the whole PEM, or one part of it
PEM_FORMATS = ("pem", "pem-key", "pem-cert", "pem-chain", "pem-fullchain")
#: one PEM block, its label captured (RFC 7468)
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----\r?\n?", re.DOTALL)


def extract(fetched: Fetched, *, key: str | None, encoding: str | None, fmt: str | None) -> bytes:
    data = fetched.value
    if key is not None:
        data = _pick(data, key)
    if encoding == "base64":
        try:
            data = base64.b64decode(b"".join(data.split()), validate=True)
        except (binascii.Error, ValueError):
            raise ExtractError("value is not valid base64 (encoding: base64)") from None
    if fmt in PEM_FORMATS:
        data = to_pem(data, fetched.content_type, fmt)
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


def to_pem(data: bytes, content_type: str | None, fmt: str = "pem") -> bytes:
    """PKCS#12 (raw or base64) or PEM to PEM: for `pem` the private key, then the certificate, then
    the chain; for `pem-key`, `pem-cert`, `pem-chain` or `pem-fullchain` (certificate and chain)
    that part alone. In a PEM value the first certificate is the certificate, the rest the chain."""
    if content_type == "application/x-pem-file" or data.lstrip().startswith(b"-----BEGIN"):
        if fmt == "pem":
            return data
        blocks = [(m.group(1), m.group(0)) for m in _PEM_BLOCK.finditer(data)]
        keys = [b for label, b in blocks if label.endswith(b"PRIVATE KEY")]
        certs = [b for label, b in blocks if label == b"CERTIFICATE"]
        return _part(keys, certs[:1], certs[1:], fmt)
    return _part(*_from_pkcs12(data, fmt), fmt)


def _from_pkcs12(data: bytes, fmt: str) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """The key, the certificate and the chain of a password-less PKCS#12 bundle, as PEM blocks."""
    try:  # lazy: only certificates need it
        from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, pkcs12
    except ModuleNotFoundError:
        raise ExtractError(f"format: {fmt} needs the cryptography package (pip install cryptography)") from None

    try:
        raw = data if data[:1] == b"\x30" else base64.b64decode(b"".join(data.split()), validate=True)
        check_work(raw)  # before OpenSSL runs the iterations the bundle asks for
        key, cert, chain = pkcs12.load_key_and_certificates(raw, None)
    except TooMuchWork as exc:
        raise ExtractError(f"{exc} (format: {fmt})") from None
    except (ValueError, binascii.Error):
        raise ExtractError(f"value is neither PEM nor a password-less PKCS#12 bundle (format: {fmt})") from None
    keys = [key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())] if key is not None else []
    leaf = [cert.public_bytes(Encoding.PEM)] if cert is not None else []
    return keys, leaf, [c.public_bytes(Encoding.PEM) for c in chain or []]


def _part(keys: list[bytes], leaf: list[bytes], chain: list[bytes], fmt: str) -> bytes:
    """The blocks `fmt` asks for; a key or certificate asked for and absent is an error (an empty
    chain is not: a self-signed certificate has none)."""
    if fmt == "pem-key" and not keys:
        raise ExtractError("the value holds no private key (format: pem-key)")
    if fmt in ("pem-cert", "pem-fullchain") and not leaf:
        raise ExtractError(f"the value holds no certificate (format: {fmt})")
    parts = {"pem": keys + leaf + chain, "pem-key": keys, "pem-cert": leaf, "pem-chain": chain,
             "pem-fullchain": leaf + chain}[fmt]
    return b"".join(p if p.endswith(b"\n") else p + b"\n" for p in parts)
