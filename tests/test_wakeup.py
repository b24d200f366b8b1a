"""How `run`'s loop waits (bridge/runtime/wakeup.py): set() never blocks and wakes a waiter, SIGTERM
and SIGINT request a stop (named, and seen by a thread waiting for it), a flood of SIGHUP is one
reload, and the handlers that were there before are put back."""

from __future__ import annotations

import os
import signal
import threading
import time

from bridge.runtime.wakeup import Wakeup


def test_wakeup_set_never_blocks_and_wakes_a_waiter() -> None:
    """set() from many threads never blocks, even with the pipe full; it wakes a waiter; clear() resets."""
    wakeup = Wakeup()
    try:
        threads = [threading.Thread(target=lambda: [wakeup.set() for _ in range(20000)]) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert not any(thread.is_alive() for thread in threads) and wakeup.is_set()
        wakeup.clear()
        assert not wakeup.is_set()
        threading.Timer(0.2, wakeup.set).start()
        started = time.monotonic()
        wakeup.wait(60)
        assert wakeup.is_set() and time.monotonic() - started < 30
    finally:
        wakeup.close()



def test_wait_returns_after_its_timeout_when_nothing_is_set() -> None:
    """With no set(), wait(timeout) returns after about the timeout and leaves is_set() false."""
    wakeup = Wakeup()
    try:
        started = time.monotonic()
        wakeup.wait(0.2)
        assert 0.15 <= time.monotonic() - started < 5 and not wakeup.is_set()
    finally:
        wakeup.close()


def test_stop_signal_is_named_and_wakes_the_stop_waiter() -> None:
    """SIGTERM sets stop_requested and stop_signal, wakes the loop, and releases a thread in wait_for_stop."""
    wakeup = Wakeup()
    seen: list[bool] = []
    waiter = threading.Thread(target=lambda: seen.append(wakeup.wait_for_stop(30)))
    try:
        wakeup.install_signals()
        waiter.start()
        os.kill(os.getpid(), signal.SIGTERM)
        wakeup.wait(30)  # the handler runs in this (the main) thread
        waiter.join(30)
        assert (wakeup.stop_requested, wakeup.stop_signal, wakeup.is_set(), seen) == (True, "SIGTERM", True, [True])
    finally:
        wakeup.close()


def test_a_flood_of_sighup_is_one_reload() -> None:
    """Many SIGHUPs while a reload is pending wake the loop once; after the loop acts, the next one counts."""
    wakeup = Wakeup()
    try:
        wakeup.install_signals()
        for _ in range(50):
            os.kill(os.getpid(), signal.SIGHUP)
        wakeup.wait(30)
        assert wakeup.reload_requested and not wakeup.stop_requested
        wakeup.clear()
        os.kill(os.getpid(), signal.SIGHUP)
        assert not wakeup.is_set()  # still pending: no new wake-up
        wakeup.reload_requested = False  # the loop acted on it
        os.kill(os.getpid(), signal.SIGHUP)
        assert wakeup.is_set() and wakeup.reload_requested
    finally:
        wakeup.close()


def test_previous_handlers_are_put_back() -> None:
    """close() restores the SIGTERM, SIGINT and SIGHUP handlers that were installed before."""
    def before(signum: int, frame: object) -> None:
        pass

    saved = {s: signal.signal(s, before) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        wakeup = Wakeup()
        wakeup.install_signals()
        assert signal.getsignal(signal.SIGHUP) is not before
        wakeup.close()
        assert all(signal.getsignal(s) is before for s in saved)
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
