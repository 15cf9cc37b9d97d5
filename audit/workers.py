"""pytest-xdist: the workers' evaluations reach the controller's record.

Each worker builds its own engine and reports its claims through their test reports (the
plugin's ``pytest_runtest_logreport``); what it computed for them (evaluations, example
images, the model and data it loaded, the suites as run) it hands over at its end in
xdist's ``workeroutput``, and the controller, which never builds an engine, merges it
(:mod:`audit.record.merge`).  The controller collects nothing either, so the record takes
its claims' order from the workers' collection.  Imports of the record stay inside the
hooks: loading the plugin must not load torch.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from audit.session import AuditSession

#: key of a worker's ``workeroutput`` holding its summary (JSON text)
SUMMARY_KEY = "segaudit_summary"


class WorkerRecords:
    """The xdist half of an audit run: hand-over on workers, merge on the controller."""

    def __init__(self, config: pytest.Config, audit: AuditSession) -> None:
        self.config = config
        self.audit = audit
        #: workers whose summaries were merged, and the node ids in collection order
        self.merged = 0
        self.order: list[str] = []

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        self.order = self.order or list(ids)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        summary = getattr(node, "workeroutput", {}).get(SUMMARY_KEY)
        if isinstance(summary, str):
            from audit.record.merge import merge_worker

            merge_worker(self.audit.recorder, json.loads(summary))
            self.merged += 1

    def hand_over(self) -> None:
        """On a worker, at its end: its summary for the controller."""
        output = getattr(self.config, "workeroutput", None)
        if output is not None and not self.config.option.collectonly:
            output[SUMMARY_KEY] = self.audit.worker_summary_json()

    def finish(self) -> None:
        """On the controller, before the record is written: the merged whole."""
        if self.order:
            self.audit.recorder.order_claims(self.order)
        if self.merged:
            from audit.record.merge import finish_merge

            finish_merge(self.audit.recorder)
