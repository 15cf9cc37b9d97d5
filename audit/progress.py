"""Progress of long evaluations on the terminal: a live bar on a TTY, plain lines in a CI log.

The engine reports ``{"evaluation", "samples_done", "samples_total", "steps_done", ...}``
before each batch and after each attack step; :class:`ProgressDisplay` turns that into a
tqdm bar (``bar``) or into a plain line at every tenth of the images and at least every
:data:`LINE_INTERVAL_S` seconds (``lines``), which a CI log without a terminal keeps
readable.  Output goes through an :class:`Output`: under pytest it writes past the output
capture, as pytest's own live logging does, so progress shows while a claim runs.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol, TextIO

from tqdm import tqdm

#: a plain line at least this often while an evaluation runs (``lines``)
LINE_INTERVAL_S = 30.0
#: and one each time another tenth of the images is done
LINE_FRACTION = 0.1
#: how the lines and the bar read; tqdm computes the rate and the ETA
LINE_FORMAT = (
    "{desc}: {n_fmt}/{total_fmt} images ({percentage:.0f}%), {elapsed} elapsed, ETA {remaining}"
)
PREFIX = "SegAudit"


def is_rank_zero(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process is rank 0 of a torchrun job (or not in one): ``RANK`` (global)
    decides, else ``LOCAL_RANK``; only rank 0 shows progress, or every rank would."""
    environ = os.environ if environ is None else environ
    for name in ("RANK", "LOCAL_RANK"):
        value = environ.get(name, "").strip()
        if value:
            try:
                return int(value) == 0
            except ValueError:
                return True  # not torchrun's: not ours to second-guess
    return True


def resolve_mode(mode: str, *, isatty: bool, verbosity: int = 0) -> str:
    """``bar``, ``lines`` or ``off`` for setting ``mode`` (audit.config.PROGRESS_MODES).

    ``auto`` is a bar on a terminal and lines elsewhere, and off under ``-qq``: a user who
    asked pytest for next to nothing gets next to nothing.  No mode shows on a rank other
    than 0.
    """
    if not is_rank_zero():
        return "off"
    if mode == "auto":
        if verbosity <= -2:
            return "off"
        return "bar" if isatty else "lines"
    return mode


class Output(Protocol):
    """Where progress goes: whole lines, and a stream for the bar's in-place updates."""

    def line(self, text: str) -> None: ...

    def stream(self) -> TextIO: ...

    def isatty(self) -> bool: ...


class StderrOutput:
    """Standard error, outside pytest (``run_audit``, scripts)."""

    def line(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def stream(self) -> TextIO:
        return sys.stderr

    def isatty(self) -> bool:
        return sys.stderr.isatty()


class _Uncaptured:
    """A file for tqdm whose writes bypass pytest's capture (each write on its own)."""

    def __init__(self, output: PytestOutput) -> None:
        self._output = output

    def write(self, text: str) -> int:
        with self._output.uncaptured():
            writer = self._output.writer()
            writer.write(text)
            writer.flush()
        return len(text)

    def flush(self) -> None:
        pass


class PytestOutput:
    """pytest's terminal (its reporter), written with capture suspended; ``config`` is a
    ``pytest.Config``, read lazily: the reporter may register after this plugin."""

    def __init__(self, config: Any) -> None:
        self._config = config

    def _plugin(self, name: str) -> Any:
        return self._config.pluginmanager.get_plugin(name)

    @contextlib.contextmanager
    def uncaptured(self) -> Iterator[None]:
        capman = self._plugin("capturemanager")
        with (
            capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext()
        ):
            yield

    def writer(self) -> TextIO:
        reporter = self._plugin("terminalreporter")
        tw = getattr(reporter, "_tw", None)
        return getattr(tw, "_file", None) or sys.__stderr__ or sys.stderr

    def _new_line(self, reporter: Any) -> None:
        # pytest's own "ensure" covers a test file's line only, not its "[100%]" at the end
        reporter.ensure_newline()
        if getattr(getattr(reporter, "_tw", None), "width_of_current_line", 0):
            reporter.write("\n")

    def line(self, text: str) -> None:
        reporter = self._plugin("terminalreporter")
        with self.uncaptured():
            if reporter is not None:
                self._new_line(reporter)
                reporter.write_line(text)
            else:
                print(text, file=sys.__stderr__ or sys.stderr, flush=True)

    def stream(self) -> TextIO:
        reporter = self._plugin("terminalreporter")
        if reporter is not None:
            # the bar starts on a line of its own, not after pytest's "suite::claim "
            with self.uncaptured():
                self._new_line(reporter)
        return _Uncaptured(self)  # type: ignore[return-value]

    def isatty(self) -> bool:
        reporter = self._plugin("terminalreporter")
        return bool(reporter.isatty()) if reporter is not None else sys.__stderr__.isatty()


class ProgressDisplay:
    """The engine's progress callback's display side; ``mode`` as :func:`resolve_mode`
    returns it, or a setting's value resolved on first use against ``output``."""

    def __init__(
        self,
        mode: str,
        output: Output | None = None,
        *,
        verbosity: Callable[[], int] = lambda: 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._setting = mode
        self._mode: str | None = None
        self.output: Output = output or StderrOutput()
        self._verbosity = verbosity
        self._clock = clock
        self._label: str | None = None
        self._total = 0
        self._start = 0.0
        self._last_line = 0.0
        self._last_tenth = -1
        self._shown = 0
        self._bar: tqdm | None = None

    @property
    def mode(self) -> str:
        if self._mode is None:
            self._mode = resolve_mode(
                self._setting, isatty=self.output.isatty(), verbosity=self._verbosity()
            )
        return self._mode

    def note(self, text: str) -> None:
        """One line outside any evaluation (the record's summaries), unless progress is off."""
        if self.mode == "off":
            return
        self.close()
        self.output.line(f"{PREFIX}: {text}")

    def update(self, progress: Mapping[str, Any]) -> None:
        """Show ``progress`` (the engine's callback); cheap when nothing changes on screen."""
        if self.mode == "off":
            return
        total = int(progress.get("samples_total") or 0)
        done = int(progress.get("samples_done") or 0)
        label = str(progress.get("evaluation") or "evaluation")
        if total <= 0:
            return
        if label != self._label or total != self._total or done < self._done():
            self._begin(label, total)
        if self.mode == "bar":
            self._update_bar(done, progress)
        else:
            self._maybe_line(done)
        if done >= total:
            self.close()

    def close(self) -> None:
        """End the evaluation on screen (the bar is cleared: the next line takes its place)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._label = None

    # -- internals ----------------------------------------------------------------------
    def _done(self) -> int:
        return self._bar.n if self._bar is not None else self._shown

    def _begin(self, label: str, total: int) -> None:
        self.close()
        self._label, self._total = label, total
        self._start = self._last_line = self._clock()
        self._last_tenth = -1
        self._shown = 0
        if self.mode == "bar":
            self._bar = tqdm(
                total=total,
                desc=f"{PREFIX}: {label}",
                unit="img",
                file=self.output.stream(),
                leave=False,
                dynamic_ncols=True,
                mininterval=0.5,
            )

    def _update_bar(self, done: int, progress: Mapping[str, Any]) -> None:
        bar = self._bar
        if bar is None:
            return
        steps = progress.get("steps_total")
        if steps:
            bar.set_postfix_str(f"step {progress.get('steps_done', 0)}/{steps}", refresh=False)
        # update(0) still redraws (at most every mininterval): the steps move on screen
        bar.update(max(0, done - bar.n))

    def _maybe_line(self, done: int) -> None:
        now = self._clock()
        tenth = int(done / self._total / LINE_FRACTION + 1e-9)
        # a line per tenth, and one per interval even when nothing moved (an attack's steps
        # on one large batch): a silent CI log looks like a hung job
        if tenth == self._last_tenth and now - self._last_line < LINE_INTERVAL_S:
            return
        self._last_tenth, self._last_line, self._shown = tenth, now, done
        text = tqdm.format_meter(
            done,
            self._total,
            now - self._start,
            prefix=f"{PREFIX}: {self._label}",
            unit="img",
            bar_format=LINE_FORMAT,
        )
        self.output.line(text)


def pytest_progress(config: Any, mode: str, *, worker: bool = False) -> ProgressDisplay:
    """The display of a pytest run: past its capture, at its verbosity; off in an xdist
    worker, whose output shows nowhere."""
    return ProgressDisplay(
        "off" if worker else mode, PytestOutput(config), verbosity=config.get_verbosity
    )


#: words of an evaluation's label in progress lines
LABEL_WORDS = 5


def evaluation_label(parts: Mapping[str, Any]) -> str:
    """An evaluation in a few words, for progress: ``attack pgd linf eps=4/255``,
    ``corruption fog severity=3``; nested parameters (an attack's own) are left out."""
    params = parts.get("params") or {}
    words = [str(parts.get("evaluation", "evaluation"))]
    for name, value in params.items():
        if isinstance(value, Mapping | list | tuple) or value is None:
            continue
        if name in ("attack", "corruption", "norm", "certifier"):
            words.append(str(value))
        elif isinstance(value, float):
            # Linf epsilons are written in steps of 1/255 (pixel levels): say them so
            levels = round(value * 255, 2)
            linf = params.get("norm") == "linf" and levels and math.isclose(value * 255, levels)
            words.append(f"{name}={levels:g}/255" if linf else f"{name}={value:g}")
        else:
            words.append(f"{name}={value}")
    # the first few say which one it is; the rest would wrap the line
    return " ".join(words[:LABEL_WORDS])
