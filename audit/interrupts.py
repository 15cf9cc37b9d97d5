"""SIGTERM handled like Ctrl-C, so a cancelled or timed-out CI job still leaves its report.

CI systems stop a job with SIGTERM (and SIGKILL a grace period later).  Python's default
for SIGTERM ends the process on the spot: no ``finally``, no record, no HTML.  Raised as a
:class:`Terminated` (a ``KeyboardInterrupt``), it takes the path Ctrl-C takes: pytest and
:func:`audit.session.run_audit` finish the record as interrupted, render the report and
exit non-zero.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any


class Terminated(KeyboardInterrupt):
    """The process was interrupted by ``signal_name`` and is finishing its record."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


def signal_name(exc: BaseException) -> str:
    """The signal behind a ``KeyboardInterrupt`` (SIGINT unless one of ours says otherwise)."""
    return exc.signal_name if isinstance(exc, Terminated) else "SIGINT"


def describe_interruption(exc: BaseException) -> str:
    """Words for the record's ``reason``: what stopped the run."""
    if signal_name(exc) == "SIGTERM":
        return "SIGTERM (a request to terminate, as CI systems send on cancel or timeout)"
    return "SIGINT (Ctrl-C)"


class InterruptSignals:
    """SIGTERM and SIGINT as :class:`Terminated`; install with :meth:`install`, undo with
    :meth:`restore`.

    Either signal is remembered (:attr:`received`), so an interrupt that a library caught
    and turned into an ordinary error, or swallowed, still stops the run at the next claim
    (:meth:`raise_if_received`).  Every SIGINT interrupts, as Python's own handler does;
    only the first SIGTERM does: a second one while the record and the report are being
    written is ignored, so that they are written whole (SIGKILL still ends the process, and
    the partial record written before it stays valid).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> bool:
        """Take over both signals; ``False`` where that is impossible (not the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            return False
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return True

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def raise_if_received(self) -> None:
        """Raise :class:`Terminated` if a signal came in: a library that turned the
        interrupt into an ordinary exception, or swallowed it, does not keep the run going."""
        if self.received is not None:
            raise Terminated(self.received)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.received == "SIGTERM" and signum == signal.SIGTERM:
            return
        self.received = name
        raise Terminated(name)

    def __enter__(self) -> InterruptSignals:
        self.install()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.restore()
