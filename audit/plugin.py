"""The pytest plugin: claims become items, verdicts become outcomes, the run becomes a report.

Hooks stay thin; the work lives in :mod:`audit.session`.  The plugin is enabled by the
``pytest11`` entry point and does nothing unless ``--audit`` is given.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from audit.claims.base import ClaimFailed
from audit.config import read_metadata_file, resolve_settings
from audit.errors import SegAuditError
from audit.interrupts import describe_interruption
from audit.record.baseline import load_baseline
from audit.record.baseline_table import summary_lines
from audit.record.summary_table import claims_table
from audit.record.user_tests import AUDIT_FIXTURES, user_test_entry
from audit.record.writer import (
    PARTIAL_DIR,
    complete_record_in,
    ensure_writable_dir,
    ensure_writable_file,
)
from audit.workers import WorkerRecords

if TYPE_CHECKING:
    from audit.claims import ClaimSpec
    from audit.session import AuditSession
    from audit.suite import Suite

#: option destinations, importable by tests and other plugins
OPT_MODEL = "segaudit_model"
OPT_ONLY = "segaudit_only"

_session_key: pytest.StashKey[AuditSession] = pytest.StashKey()
#: the claim's record entry (JSON text) on its test report: the report carries it from an
#: xdist worker to the controller, which keeps the record; not a user property, so that
#: --junitxml gets the readable measured, threshold and verdict only
_ENTRY_ATTR = "segaudit_entry"
#: settings whose option's dest is ``segaudit_<setting>``, read into the settings as given
_SAME_NAMED_SETTINGS = (
    "data", "device", "palette", "size_buckets", "seed", "limit", "batch_size", "factory",
    "trust_pickle", "claim_timeout", "require_proof", "baseline", "fail_on_regression", "ctrf",
    "hypothesis_db", "progress", "precision", "loader_workers",
)  # fmt: skip
#: what a bare --audit stands for: the configured model, else the demo
_CONFIGURED_MODEL = "<configured>"
#: a user's own test's outcome (JSON text) on its test report, for the record, like
#: _ENTRY_ATTR; set for tests that use one of these fixtures
_USER_TEST_ATTR = "segaudit_user_test"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("segaudit", "robustness audit of a segmentation model (SegAudit)")
    group.addoption(
        "--audit",
        dest=OPT_MODEL,
        nargs="?",
        const=_CONFIGURED_MODEL,
        default=None,
        metavar="MODEL",
        help="audit MODEL (TorchScript .pt, torch.export .pt2, state dict or safetensors with "
        "--audit-factory); no value audits the 'model' of [tool.segaudit] or audit.toml, or "
        "the bundled demo model when none is configured ('demo' names it). Enables the plugin.",
    )
    group.addoption(
        "--audit-data",
        dest="segaudit_data",
        metavar="SPEC",
        help="dataset: synthetic[?n=64&seed=0&size=128x256], cityscapes:PATH[?split=val], "
        "acdc:PATH[?condition=all&split=val], voc:PATH[?split=val], folder:PATH "
        "(default: synthetic)",
    )
    group.addoption(
        "--audit-suite",
        dest="segaudit_suites",
        action="append",
        default=[],
        metavar="NAME|PATH",
        help="claim suite: a built-in name (smoke, ...) or a TOML file; repeatable "
        "(default: smoke)",
    )
    group.addoption(
        "--audit-report",
        dest="segaudit_report",
        metavar="DIR",
        help="directory for results.json and index.html (default: audit-report)",
    )
    group.addoption(
        "--audit-device",
        dest="segaudit_device",
        metavar="DEVICE",
        help="auto (default: CUDA if available), cpu, cuda or cuda:<index>",
    )
    group.addoption(
        "--audit-palette",
        dest="segaudit_palette",
        metavar="PALETTE",
        help="class colours of drawn masks and the report: dataset (default) or colorblind "
        "(Okabe-Ito, safe under colour-vision deficiency)",
    )
    group.addoption(
        "--audit-size-buckets",
        dest="segaudit_size_buckets",
        metavar="SMALL,LARGE",
        help="object size buckets as fractions of the image area: an object is small below "
        "SMALL, large at or above LARGE (default 0.001,0.01)",
    )
    group.addoption("--audit-seed", dest="segaudit_seed", type=int, help="random seed (default 0)")
    group.addoption(
        "--audit-limit",
        dest="segaudit_limit",
        type=int,
        metavar="N",
        help="audit only the first N samples of the dataset",
    )
    group.addoption(
        "--audit-batch-size",
        dest="segaudit_batch_size",
        type=int,
        metavar="N",
        help="images per forward pass (default 8)",
    )
    group.addoption(
        "--audit-factory",
        dest="segaudit_factory",
        metavar="MODULE:FUNCTION",
        help="function that builds the network, for state-dict and safetensors models",
    )
    group.addoption(
        "--audit-metadata",
        dest="segaudit_metadata",
        metavar="FILE",
        help="JSON or TOML file of model metadata (class_names, num_classes, mean, std, "
        "lipschitz, ...), overriding the model's embedded audit.json and suite [model] tables",
    )
    group.addoption(
        "--audit-trust-pickle",
        dest="segaudit_trust_pickle",
        action="store_true",
        default=None,
        help="allow loading a fully pickled model; this executes code from the file",
    )
    group.addoption(
        "--audit-threshold",
        dest="segaudit_thresholds",
        action="append",
        default=[],
        metavar="SELECTOR=VALUE",
        help="replace a claim's threshold: 'ifgsm=0.3' sets min, 'ifgsm=max:0.2' sets max; "
        "SELECTOR is a claim id, suite::id, or one sweep item's node id; repeatable",
    )
    group.addoption(
        "--audit-require-proof",
        dest="segaudit_require_proof",
        action="store_true",
        default=None,
        help="fail every claim whose value rests on something unproven (a certificate on a "
        "claimed, not proven, Lipschitz constant)",
    )
    group.addoption(
        "--audit-claim-timeout",
        dest="segaudit_claim_timeout",
        type=float,
        metavar="SECONDS",
        help="wall-clock budget of every claim; past it the claim is an error that records "
        "how far it got (a claim's own 'timeout' key wins)",
    )
    group.addoption(
        "--audit-baseline",
        dest="segaudit_baseline",
        metavar="PATH",
        help="compare with a previous run: its results.json or report folder; the record "
        "and the summary say which claims regressed",
    )
    group.addoption(
        "--audit-fail-on-regression",
        dest="segaudit_fail_on_regression",
        action="store_true",
        default=None,
        help="fail a claim that regressed against --audit-baseline beyond its tolerance, "
        "even where its threshold holds",
    )
    group.addoption(
        "--audit-ctrf",
        dest="segaudit_ctrf",
        metavar="PATH",
        help="also write the run as a CTRF JSON report (https://ctrf.io), one test per claim",
    )
    group.addoption(
        "--audit-hypothesis-db",
        dest="segaudit_hypothesis_db",
        metavar="DIR",
        help="Hypothesis example database of the searching claims (corruption_search, "
        "invariance), so a failure found once is replayed first (default "
        ".segaudit/hypothesis under the project root; 'none' turns it off)",
    )
    group.addoption(
        "--audit-progress",
        dest="segaudit_progress",
        choices=("auto", "bar", "lines", "off"),
        help="progress of long evaluations: bar (on a terminal), lines (every 10%% or 30 s, "
        "for CI logs), off; auto (default): bar on a terminal, else lines, off under -qq",
    )
    group.addoption(
        "--audit-precision",
        dest="segaudit_precision",
        choices=("float32", "bfloat16", "float16"),
        help="run the attacks' iterations under autocast in this precision (default float32); "
        "certificates and soundness checks always run in full precision",
    )
    group.addoption(
        "--audit-loader-workers",
        dest="segaudit_loader_workers",
        type=int,
        metavar="N",
        help="processes that load and decode the next images while the device works "
        "(default 0: the audit's own process loads them)",
    )
    group.addoption(
        "--audit-cache",
        dest="segaudit_cache",
        metavar="DIR",
        help="keep evaluations in DIR across runs, so a re-run computes only what changed "
        "(off by default; 'none' turns a configured cache off)",
    )
    group.addoption(
        "--audit-only",
        dest=OPT_ONLY,
        action="store_true",
        default=False,
        help="collect only the audit's claims, not test files",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "segaudit: a SegAudit claim (added to every claim item)")
    model = config.getoption(OPT_MODEL)
    if model is None:
        return
    # The audit's machinery (torch, the claim kinds, third-party entry points) loads only
    # when an audit runs: installing the plugin must not slow down every other test run.
    from audit.claims import known_kinds
    from audit.distributed import join_torchrun
    from audit.progress import pytest_progress
    from audit.session import AuditSession, preflight

    for kind in known_kinds():
        config.addinivalue_line("markers", f"segaudit_{kind}: a SegAudit claim of kind {kind!r}")
    opt = config.getoption
    invocation_dir = config.invocation_params.dir
    try:
        # settings named as their options (--audit-seed is dest segaudit_seed)
        cli = {name: opt(f"segaudit_{name}") for name in _SAME_NAMED_SETTINGS}
        cli |= {
            "model": None if model == _CONFIGURED_MODEL else model,
            "suites": tuple(opt("segaudit_suites")),
            "report_dir": opt("segaudit_report"),
            "metadata": read_metadata_file(opt("segaudit_metadata"), invocation_dir),
            "thresholds": opt("segaudit_thresholds") or None,
            "cache_dir": opt("segaudit_cache"),
        }
        settings = resolve_settings(rootdir=config.rootpath, cli=cli, invocation_dir=invocation_dir)
        if not config.option.collectonly:
            # Found now, not after the first claim's work: nothing is computed for a
            # report that cannot be written, a model that is not there, ...
            preflight(settings)
            ensure_writable_dir(settings.report_dir, what="--audit-report")
            if settings.ctrf is not None:
                ensure_writable_file(settings.ctrf, what="--audit-ctrf")
            if settings.cache_dir is not None:
                ensure_writable_dir(settings.cache_dir, what="--audit-cache")
        baseline = load_baseline(settings.baseline) if settings.baseline is not None else None
        xdist = hasattr(config, "workerinput") or bool(getattr(config.option, "numprocesses", 0))
        ranks, settings = join_torchrun(settings, xdist=xdist)
    except SegAuditError as exc:
        raise pytest.UsageError(f"SegAudit: {exc}") from None
    is_worker = hasattr(config, "workerinput")
    audit = AuditSession(
        settings,
        command_line=["pytest", *config.invocation_params.args],
        # --collect-only lists the claims and writes nothing
        writes_record=not is_worker and not config.option.collectonly,
        baseline=baseline,
        progress=pytest_progress(config, settings.progress, worker=is_worker),
        ranks=ranks,
    )
    config.stash[_session_key] = audit
    config.pluginmanager.register(AuditRun(config, audit), "segaudit-run")


def pytest_unconfigure(config: pytest.Config) -> None:
    run = config.pluginmanager.get_plugin("segaudit-run")
    if isinstance(run, AuditRun):
        run.audit.interrupts.restore()
        if run.audit.ranks is not None:
            run.audit.ranks.leave(wait=run.audit.interrupts.received is None)


def _audit(config: pytest.Config) -> AuditSession | None:
    return config.stash.get(_session_key, None)


class AuditRun:
    """Hooks active only while an audit runs (registered by ``pytest_configure``)."""

    def __init__(self, config: pytest.Config, audit: AuditSession) -> None:
        self.config = config
        self.audit = audit
        self.is_worker = hasattr(config, "workerinput")
        self.report_dir: Path | None = None
        self.report_error: str | None = None
        #: the report folder whose complete record a partial run left alone
        self.partial_of: Path | None = None
        self.interrupted_by: str | None = None
        #: claims -k, -m, --lf or --deselect left out
        self.deselected = 0
        #: pytest-xdist: workers hand their evaluations to the controller's record
        self.workers = WorkerRecords(config, audit)
        config.pluginmanager.register(self.workers, "segaudit-workers")
        # The controller owns the record, so it alone takes over SIGTERM and SIGINT.
        if not self.is_worker:
            audit.interrupts.install()

    def pytest_report_header(self) -> list[str]:
        trust = self.audit.recorder.provenance["trust_pickle"]
        if not trust["enabled"]:
            return []
        line = (
            f"SegAudit: WARNING: trust_pickle is on (from {trust['source']}): a fully "
            "pickled model file will run its code"
        )
        if trust["source"] != "command line":
            line += "; a file in the repository turned it on, not this command line"
        return [line]

    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        self.interrupted_by = describe_interruption(excinfo.value)

    def pytest_ignore_collect(self, collection_path: Path) -> bool | None:
        return True if self.config.getoption(OPT_ONLY) else None

    @pytest.hookimpl(wrapper=True)
    def pytest_make_collect_report(self, collector: pytest.Collector) -> Iterator[None]:
        report = yield
        if isinstance(collector, pytest.Session) and report.passed:
            for ref in self.audit.settings.suites:
                report.result.append(SuiteCollector.for_ref(collector, self.audit, ref))
        return report

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        for item in session.items:
            if isinstance(item, ClaimItem):
                self.audit.register(item.spec)
        if self.audit.writes_record:
            self._keep_a_complete_record()
        # The first record: a run killed before its first claim ends still leaves one.
        self.audit.checkpoint()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Iterator[None]:
        report = yield
        entry = item.entry_json if isinstance(item, ClaimItem) else None
        if entry is not None and (report.when == "call" or report.failed):
            # pytest serialises a report's attributes for xdist (pytest_report_to_serializable)
            setattr(report, _ENTRY_ATTR, entry)
        if not isinstance(item, ClaimItem) and any(
            name in AUDIT_FIXTURES for name in getattr(item, "fixturenames", ())
        ):
            user = user_test_entry(item, call, report)
            if user is not None:
                setattr(report, _USER_TEST_ATTR, json.dumps(user, default=str))
        error = call.excinfo.value if call.excinfo is not None else None
        if (
            isinstance(item, ClaimItem)
            and call.when == "setup"
            and isinstance(error, SegAuditError)
        ):
            # pytest formats setup errors itself, as a traceback into the engine; the
            # sentence is what a reader of a CI log needs.
            report.longrepr = f"SegAudit could not run claim {item.spec.nodeid}: {error}"
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        value = getattr(report, _ENTRY_ATTR, None)
        if isinstance(value, str):
            entry = json.loads(value)
            self.audit.recorder.claims.setdefault(entry["nodeid"], entry).update(entry)
            # A partial record after every claim (from xdist workers too) survives
            # even a killed process.
            self.audit.checkpoint()
        user = getattr(report, _USER_TEST_ATTR, None)
        if isinstance(user, str):
            self.audit.recorder.record_user_test(json.loads(user))

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.deselected += sum(isinstance(item, ClaimItem) for item in items)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.is_worker:
            self.workers.hand_over()  # its claims went through their test reports
            return
        if not self.audit.writes_record:
            return  # --co writes nothing
        self.workers.finish()
        interrupted = exitstatus in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.INTERNAL_ERROR)
        ran_all = all(c["verdict"] != "not_run" for c in self.audit.recorder.claims.values())
        stopped_by = self.interrupted_by
        if stopped_by is None and session.shouldstop:
            stopped_by = f"pytest ({session.shouldstop})"
        try:
            results = self.audit.finish(
                complete=ran_all and not interrupted, interrupted_by=stopped_by
            )
            # under torchrun, rank 0 writes the report; the others wrote to a scratch folder
            self.report_dir = (
                results.parent if self.audit.ranks is None or not self.audit.ranks.rank else None
            )
        except Exception as exc:
            # Whatever went wrong, pytest's own summary must still print; results.json is
            # written before the HTML, so the record survives a rendering failure.
            self.report_error = f"{type(exc).__name__}: {exc}"

    def _keep_a_complete_record(self) -> None:
        """A run of some claims only (-k, -m, --lf, --deselect) or that may stop early
        (-x, --maxfail) writes to ``<report>/partial/`` when the report folder holds a
        complete record, which it would otherwise replace with a part of itself."""
        option = self.config.option
        selection = []
        if self.deselected:
            selection.append(f"{self.deselected} claim(s) deselected")
        if getattr(option, "maxfail", 0):  # -x is --maxfail=1
            selection.append(f"stops at failure {option.maxfail}")
        if not selection:
            return
        self.audit.recorder.provenance["selection"] = "; ".join(selection)
        main = self.audit.settings.report_dir
        if not complete_record_in(main):
            return
        partial = main / PARTIAL_DIR
        ensure_writable_dir(partial, what="--audit-report")
        self.audit.settings = replace(self.audit.settings, report_dir=partial)
        self.partial_of = main

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.report_error is not None:
            terminalreporter.write_line(f"SegAudit: report not rendered: {self.report_error}")
        if self.report_dir is not None:
            terminalreporter.write_sep("-", "SegAudit")
            width = getattr(terminalreporter, "_tw", None)
            columns = width.fullwidth if width is not None else 100
            for line in claims_table(self.audit.recorder.claims.values(), width=columns):
                terminalreporter.write_line(line)
            terminalreporter.write_line(f"audit report: {self.report_dir / 'index.html'}")
            terminalreporter.write_line(f"audit record: {self.report_dir / 'results.json'}")
            if self.partial_of is not None:
                terminalreporter.write_line(
                    f"(a partial run: the complete record in {self.partial_of} is kept)"
                )
        self._write_output_resize(terminalreporter)
        if self.audit.recorder.baseline is not None and "claims" in self.audit.recorder.baseline:
            for line in summary_lines(self.audit.recorder.baseline):
                terminalreporter.write_line(line)
        diagnostics = self.audit.recorder.diagnostics
        if diagnostics:
            # Not failures: they question how strong the evaluation was, not a claim.
            terminalreporter.write_line(
                f"{len(diagnostics)} diagnostic(s): the attacks may be too weak or the model "
                "may mask gradients (see the report):",
                yellow=True,
            )
            for finding in diagnostics:
                terminalreporter.write_line(f"  {finding['check']}: {finding['message']}")

    def _write_output_resize(self, terminalreporter: Any) -> None:
        """One line, only when the model's logits were resized before scoring."""
        # Lazy: the report package loads jinja2, which no run without --audit needs.
        from audit.report.format import fmt_resize

        model = self.audit.recorder.provenance.get("model") or {}
        resize = fmt_resize(
            model.get("input_resolution"),
            model.get("output_resolution"),
            model.get("resize_factor"),
        )
        if resize is not None:
            terminalreporter.write_line(f"model output: {resize}")


class SuiteCollector(pytest.Collector):
    """One claim suite; its items are the claims, with node ids ``<suite name>::<claim id>``.

    Not a ``pytest.File``: ``--lf`` skips files it does not know to hold failures, and a
    suite's node id is its name, not its path.  A suite that fails to load becomes a
    collector that raises its error at collection, which pytest reports without traceback.
    """

    def __init__(self, *, suite: Suite | None, error: SegAuditError | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.suite = suite
        self.error = error

    @classmethod
    def for_ref(cls, parent: pytest.Session, audit: AuditSession, ref: str) -> SuiteCollector:
        try:
            suite = audit.load_suite(ref)
        except SegAuditError as exc:
            audit.recorder.record_error(f"suite {ref}", str(exc))
            return cls.from_parent(parent, name=ref, nodeid=ref, suite=None, error=exc)
        return cls.from_parent(
            parent, name=suite.name, nodeid=suite.name, path=suite.path, suite=suite, error=None
        )

    def collect(self) -> list[ClaimItem]:
        if self.suite is None:
            raise self.CollectError(f"SegAudit: {self.error}")
        return [ClaimItem.from_parent(self, name=spec.id, spec=spec) for spec in self.suite.claims]

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException]) -> Any:
        if isinstance(excinfo.value, self.CollectError):
            return str(excinfo.value.args[0])
        return super().repr_failure(excinfo)


class ClaimItem(pytest.Item):
    """A claim as a test: passes when the claim holds, fails with a sentence when not."""

    def __init__(self, *, spec: ClaimSpec, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        #: the claim's record entry as JSON, once the claim ran (or its setup failed)
        self.entry_json: str | None = None
        self.add_marker(pytest.mark.segaudit)
        self.add_marker(getattr(pytest.mark, f"segaudit_{spec.kind}"))

    def setup(self) -> None:
        # Model and data load here: a failure is a pytest error (the audit could not run),
        # not a failure (the model broke the claim).
        audit = _audit(self.config)
        try:
            audit.prepare(self.spec)
        except BaseException:
            self._attach(audit)
            raise

    def runtest(self) -> None:
        audit = _audit(self.config)
        try:
            audit.check(self.spec)
        finally:
            self._attach(audit)

    def _attach(self, audit: AuditSession) -> None:
        # Properties travel on the report into --junitxml; the whole entry travels beside
        # them (pytest_runtest_makereport) to the controller, which records it.
        entry = audit.recorder.claims[self.spec.nodeid]
        self.user_properties.append(("measured", entry.get("measured")))
        self.user_properties.append(("threshold", self.spec.threshold.describe()))
        self.user_properties.append(("verdict", entry.get("verdict")))
        self.entry_json = json.dumps(entry, default=str)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException]) -> Any:
        if isinstance(excinfo.value, ClaimFailed | SegAuditError):
            # The message is the whole story; a traceback into the engine helps nobody,
            # and the short summary line should read as the verdict, not a class name.
            rep = excinfo.getrepr(style="value", chain=False)
            if rep.reprcrash is not None:
                rep.reprcrash.message = str(excinfo.value).splitlines()[0]
            return rep
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return Path(self.spec.source), None, f"claim {self.spec.nodeid}"


@pytest.fixture(scope="session")
def audit_session(request: pytest.FixtureRequest) -> Any:
    """The running :class:`audit.session.AuditSession`; skips the test without ``--audit``."""
    audit = _audit(request.config)
    if audit is None:
        pytest.skip("needs --audit")
    return audit


@pytest.fixture(scope="session")
def audit_engine(audit_session: Any) -> Any:
    """The session's :class:`audit.engine.Engine` (model, data, cached evaluations)."""
    return audit_session.engine
