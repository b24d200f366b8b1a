"""DER pieces for tests that hand-edit what `cryptography` encodes (PKCS#12 bundles): one TLV,
a SEQUENCE's children, a bundle's MacData iteration count. Short test inputs only."""

from __future__ import annotations


def tlv(tag: int, content: bytes) -> bytes:
    """One DER element: `tag`, the minimal length, `content`."""
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content


def children(der: bytes) -> list[bytes]:
    """The encoded elements inside a definite-length DER SEQUENCE."""
    def header(pos: int) -> tuple[int, int]:
        first = der[pos + 1]
        if first < 0x80:
            return pos + 2, first
        count = first & 0x7F
        return pos + 2 + count, int.from_bytes(der[pos + 2:pos + 2 + count], "big")

    start, length = header(0)
    out, pos = [], start
    while pos < start + length:
        content, size = header(pos)
        out.append(der[pos:content + size])
        pos = content + size
    return out


def with_mac_iterations(bundle: bytes, iterations: int) -> bytes:
    """A PKCS#12 `bundle` with its MacData asking for `iterations` rounds."""
    version, auth_safe, mac = children(bundle)
    digest, salt, _ = children(mac)
    count = tlv(0x02, iterations.to_bytes((iterations.bit_length() + 8) // 8, "big"))
    return tlv(0x30, version + auth_safe + tlv(0x30, digest + salt + count))
