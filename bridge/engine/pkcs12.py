"""Bound the work a PKCS#12 bundle may ask for before it is opened.

A PKCS#12 bundle names its own key-derivation work: the MAC's iteration count (MacData), and each
encryption's (PBES1 and PBKDF2 parameters, scrypt's cost). A hostile bundle asking for 2^31-1
iterations keeps OpenSSL busy for minutes, and `cryptography` sets no limit, so this walks the
DER (or BER) tree first, a few microseconds a bundle, and refuses any count past
MAX_ITERATIONS. Every one of those parameter shapes puts the count as an INTEGER right after the
salt's OCTET STRING; that is the rule checked. It never decodes a key and never reports a value.
"""

from __future__ import annotations

#: more key-derivation iterations than any tool writes (OpenSSL 2,048, Java 10,000, OWASP's
#: PBKDF2 advice 600,000); 1,000,000 take well under a second
MAX_ITERATIONS = 1_000_000
_MAX_DEPTH = 32
_OCTET_STRING, _INTEGER, _CONSTRUCTED = 0x04, 0x02, 0x20


class TooMuchWork(ValueError):
    """The bundle asks for more key-derivation iterations than MAX_ITERATIONS."""


class _Malformed(ValueError):
    pass


def check_work(data: bytes) -> None:
    """Raise TooMuchWork when `data` (a DER/BER PKCS#12 bundle) asks for too many iterations;
    a bundle this walk cannot parse is left to the real parser to refuse."""
    try:
        _walk(data, 0, len(data), 0)
    except _Malformed:
        return


def _header(data: bytes, pos: int, end: int) -> tuple[int, int, int | None]:
    """(tag, content start, content length or None when indefinite) of the element at `pos`."""
    if pos + 2 > end:
        raise _Malformed
    tag, first = data[pos], data[pos + 1]
    if tag & 0x1F == 0x1F:  # high tag numbers do not occur in PKCS#12
        raise _Malformed
    pos += 2
    if first < 0x80:
        return tag, pos, first
    if first == 0x80:
        return tag, pos, None
    count = first & 0x7F
    if count > 4 or pos + count > end:
        raise _Malformed
    return tag, pos + count, int.from_bytes(data[pos:pos + count], "big")


def _walk(data: bytes, pos: int, end: int, depth: int) -> int:
    """Check the elements in data[pos:end], stopping early at an end-of-contents mark (the end of
    a BER indefinite-length parent), and return where they stop."""
    if depth > _MAX_DEPTH:
        raise _Malformed
    previous = None
    while pos < end:
        if data[pos:pos + 2] == b"\x00\x00":  # end of an indefinite-length element
            return pos + 2
        tag, start, length = _header(data, pos, end)
        if length is None:  # BER indefinite length: the children say where it ends
            if not tag & _CONSTRUCTED:
                raise _Malformed
            pos = _walk(data, start, end, depth + 1)
            previous = tag
            continue
        stop = start + length
        if stop > end:
            raise _Malformed
        if tag == _INTEGER and previous == _OCTET_STRING and int.from_bytes(data[start:stop]) > MAX_ITERATIONS:
            raise TooMuchWork(f"the bundle asks for more than {MAX_ITERATIONS} key-derivation iterations")
        if tag & _CONSTRUCTED:
            _walk(data, start, stop, depth + 1)
        elif tag == _OCTET_STRING:
            _nested(data, start, stop, depth + 1)
        previous, pos = tag, stop
    return pos


def _nested(data: bytes, start: int, stop: int, depth: int) -> None:
    """An OCTET STRING often wraps DER (the bags, the authenticated safe): check it when it parses."""
    if stop - start < 2 or data[start] & 0x1F == 0x1F or not data[start] & _CONSTRUCTED:
        return
    try:
        _walk(data, start, stop, depth)
    except _Malformed:
        return
