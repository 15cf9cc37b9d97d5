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
    """The process was asked to terminate (SIGTERM) and is finishing its record."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


def signal_name(exc: BaseException) -> str:
    """The signal behind a ``KeyboardInterrupt``: SIGTERM when it was ours, else SIGINT."""
    return exc.signal_name if isinstance(exc, Terminated) else "SIGINT"


def describe_interruption(exc: BaseException) -> str:
    """Words for the record's ``reason``: what stopped the run."""
    if isinstance(exc, Terminated):
        return (
            f"{exc.signal_name} (a request to terminate, as CI systems send on cancel or timeout)"
        )
    return "SIGINT (Ctrl-C)"


class SigtermAsInterrupt:
    """Install with :meth:`install`, undo with :meth:`restore`.

    Only the first SIGTERM interrupts: a second one while the record and the report are
    being written is ignored, so that they are written whole (SIGKILL still ends the
    process, and the partial record written before it stays valid).
    """

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: Any = None
        self._installed = False

    def install(self) -> bool:
        """Take over SIGTERM; ``False`` where that is impossible (not the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            return False
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        self._installed = True
        return True

    def restore(self) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False

    def raise_if_received(self) -> None:
        """Raise :class:`Terminated` if a SIGTERM came in: a library that turned the
        interrupt into an ordinary exception, or swallowed it, does not keep the run going."""
        if self.received is not None:
            raise Terminated(self.received)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            return
        self.received = signal.Signals(signum).name
        raise Terminated(self.received)

    def __enter__(self) -> SigtermAsInterrupt:
        self.install()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.restore()
