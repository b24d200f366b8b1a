"""`exec --mask`: the child's stdout and stderr pass through the bridge, every delivered value of
MIN_MASKED bytes or more replaced by MASK.

The next match is found with `bytes.find` per value (C's fast search; each value's next position
is remembered, so a match costs a new search only for the values it passed), and a compiled
alternation of the escaped values, longest first, picks the longest value at that position. On
text, where a value's first byte is common, this runs several times as fast as searching with
the alternation itself, whose cost per byte grows with the number of values; the cost here grows
with it too, one search per value (bench/mask_throughput.py). A value split across two writes is
still caught: the bytes at the end of a write that could begin a value (a proper prefix of one)
are held back until the next write shows whether they do, and nothing else is held. A value that
is shorter than MIN_MASKED bytes is not masked (it would conceal ordinary words). This module
never logs, and never writes a value anywhere but to the stream it came from, concealed.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import threading
from collections.abc import Iterable

MASK = b"<concealed by secrets-bridge>"
#: shorter values are not masked: "true", "admin", a port number would conceal ordinary text
MIN_MASKED = 6
#: the most one read takes from the child's pipe
READ_BYTES = 65536


class _Compiled:
    """One set of values, compiled: replaced whole when values are added (pumps read it lock-free)."""

    def __init__(self, values: frozenset[bytes]) -> None:
        ordered = sorted(values, key=lambda v: (-len(v), v))
        self.pattern = re.compile(b"|".join(re.escape(v) for v in ordered)) if ordered else None
        self.max_len = len(ordered[0]) if ordered else 0
        self.by_first: dict[int, list[bytes]] = {}
        for value in ordered:
            self.by_first.setdefault(value[0], []).append(value)
        self.values = ordered

    def search(self, buf: bytes, pos: int, next_at: dict[bytes, int]) -> tuple[int, int] | None:
        """The leftmost match at or after `pos` (the longest value there): (start, end).
        `next_at` remembers each value's next position in this `buf` between calls."""
        assert self.pattern is not None
        best = -1
        for value in self.values:
            at = next_at.get(value, -2)
            if at != -1 and at < pos:  # not looked for yet (-2), or passed: look again from pos
                at = next_at[value] = buf.find(value, pos)
            if at != -1 and (best == -1 or at < best):
                best = at
        if best == -1:
            return None
        found = self.pattern.match(buf, best)
        assert found is not None
        return found.span()

    def prefix_at(self, buf: bytes, start: int, stop: int) -> int | None:
        """The first position in [start, stop] where the rest of `buf` is a proper prefix of a value."""
        size = len(buf)
        for pos in range(max(start, size - self.max_len + 1, 0), min(stop + 1, size)):
            rest = size - pos
            for value in self.by_first.get(buf[pos], ()):
                if len(value) > rest and value.startswith(buf[pos:]):
                    return pos
        return None


class Mask:
    """The values to conceal. `add` may be called while streams are masked (a rotation)."""

    def __init__(self, values: Iterable[bytes] = ()) -> None:
        self._values: frozenset[bytes] = frozenset()
        self._lock = threading.Lock()
        self.compiled = _Compiled(self._values)
        self.add(values)

    def add(self, values: Iterable[bytes]) -> None:
        """Conceal these values too (old ones stay concealed: they were secrets as well)."""
        with self._lock:
            new = self._values | {v for v in values if len(v) >= MIN_MASKED}
            if new != self._values:
                self._values = new
                self.compiled = _Compiled(new)

    def stream(self) -> MaskedStream:
        return MaskedStream(self)


class MaskedStream:
    """One output stream's state: the bytes held back because they may begin a value."""

    def __init__(self, mask: Mask) -> None:
        self.mask = mask
        self.tail = b""

    def feed(self, data: bytes) -> bytes:
        """What may be written now of `data` (after what was held back), values concealed."""
        compiled = self.mask.compiled
        buf = self.tail + data
        if compiled.pattern is None:
            self.tail = b""
            return buf
        out: list[bytes] = []
        pos = 0
        next_at: dict[bytes, int] = {}
        while True:
            found = compiled.search(buf, pos, next_at)
            # Up to (and at) the next match: a position whose rest could still grow into a value
            # (or into a longer value than the one found) is held back with everything after it.
            hold = compiled.prefix_at(buf, pos, found[0] if found else len(buf))
            if hold is not None:
                out.append(buf[pos:hold])
                self.tail = buf[hold:]
                return b"".join(out)
            if found is None:
                out.append(buf[pos:])
                self.tail = b""
                return b"".join(out)
            out += (buf[pos:found[0]], MASK)
            pos = found[1]

    def flush(self) -> bytes:
        """At the end of the stream: what was held back (a value's beginning is not the value)."""
        compiled, buf, self.tail = self.mask.compiled, self.tail, b""
        return buf if compiled.pattern is None else compiled.pattern.sub(MASK, buf)


def _write_all(fd: int, data: bytes) -> bool:
    """Write everything; False once the reader has gone (the child's output is then dropped)."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except InterruptedError:
            continue
        except BlockingIOError:  # a non-blocking stdout that is full: wait until it drains
            select.select([], [fd], [])
        except OSError:  # the reader has gone (EPIPE) or the stream broke: drop the rest
            return False
    return True


class MaskedOutput:
    """Two pipes the child writes its stdout and stderr to, pumped to the bridge's own, masked.

    The same pipes serve every child across restarts; `close` ends them once the last child and
    anything it left holding them is gone (or after a timeout)."""

    def __init__(self, mask: Mask, targets: tuple[int, int] = (1, 2)) -> None:
        self.mask = mask
        self.child_fds: list[int] = []
        self._threads: list[threading.Thread] = []
        for target in targets:
            read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
            self.child_fds.append(write_fd)
            thread = threading.Thread(target=self._pump, args=(read_fd, target), name=f"mask-{target}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _pump(self, read_fd: int, target: int) -> None:
        stream, open_target = self.mask.stream(), True
        try:
            while True:
                try:
                    data = os.read(read_fd, READ_BYTES)
                except InterruptedError:
                    continue
                if not data:
                    break
                out = stream.feed(data)
                if out and open_target:
                    open_target = _write_all(target, out)
            rest = stream.flush()
            if rest and open_target:
                _write_all(target, rest)
        finally:
            os.close(read_fd)

    def close(self, timeout: float) -> None:
        """Stop writing into the pipes ourselves; let the pumps drain what the child wrote."""
        for fd in self.child_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.child_fds = []
        for thread in self._threads:
            thread.join(timeout)
