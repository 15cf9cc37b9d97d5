"""docs/extending.md, proven: a test-only attack, certifier, claim kind and report section,
each registered the documented way and used by a real audit, and third-party entry points."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any, ClassVar

import pytest

import audit.registry
from audit.attacks import ATTACKS, register_attack
from audit.attacks.base import Attack
from audit.claims import KINDS, ClaimKind, Measurement, register
from audit.claims.certifiers import CERTIFIERS, Certifier, register_certifier
from audit.config import Settings
from audit.evaluations import evaluate_clean
from audit.registry import Registry
from audit.report import register_section, unregister_section
from audit.session import run_audit
from conftest import TINY_DATA

SUITE = """
name = "ext"
[[claims]]
id = "shifted"
kind = "attack"
attack = "shift"
norm = "linf"
eps = "8/255"
params = { sign = -1 }
metric = "pixel_accuracy"
min = 0.0

[[claims]]
id = "nothing-certified"
kind = "certified"
certifier = "nothing"
norm = "l2"
eps = 0.1
metric = "certified_pixel_accuracy"
because = "a test certifier"
max = 0.0

[[claims]]
id = "count"
kind = "image_count"
min = 4
"""


@pytest.fixture
def plugins(tmp_path: Path) -> Iterator[None]:
    """The examples of docs/extending.md, registered for one test and removed after."""

    @register_attack
    class Shift(Attack):
        """Every pixel moved by eps: a deterministic baseline."""

        name = "shift"
        norms = ("linf",)
        family = "single_step"
        defaults: ClassVar[dict[str, Any]] = {"sign": 1}

        def run(self, images, labels, *, threat, ctx):
            return images + self.params["sign"] * threat.eps.value

    @register_certifier
    class Nothing(Certifier):
        """Certifies no pixel: the smallest honest certificate."""

        name = "nothing"
        keys: ClassVar[dict[str, str]] = {"because": "why nothing is certified"}

        @classmethod
        def parse(cls, raw, where):
            return {"because": str(raw.get("because", ""))}

        @classmethod
        def measure(cls, spec, engine, eps, metric):
            n = evaluate_clean(engine).num_samples
            return Measurement(
                value=0.0,
                quantity="certified pixel accuracy",
                condition=f"at L2 radius {eps} ({spec.params['because']})",
                num_samples=n,
            )

    @register
    class ImageCount(ClaimKind):
        name = "image_count"
        value_range = None

        @classmethod
        def parse(cls, raw, where):
            return {}

        @classmethod
        def measure(cls, spec, engine):
            n = evaluate_clean(engine).num_samples
            return Measurement(
                value=n, quantity="image count", condition="in the data", num_samples=n
            )

    (tmp_path / "_ext.html.j2").write_text("<p>ext: {{ ctx.claims }} claims</p>")
    register_section(
        "ext",
        "Extension",
        "_ext.html.j2",
        lambda r: {"claims": len(r["claims"])},
        before="provenance",
    )
    try:
        yield
    finally:
        ATTACKS.unregister("shift")
        CERTIFIERS.unregister("nothing")
        KINDS.unregister("image_count")
        unregister_section("ext")


def test_each_documented_plugin_works_in_a_real_audit(
    plugins: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the report's templates folder holds the section's partial next to the built-in ones
    import audit.report.render as render

    templates = tmp_path / "templates"
    templates.mkdir()
    for path in render._templates().iterdir():
        (templates / path.name).write_bytes(path.read_bytes())
    (templates / "_ext.html.j2").write_text((tmp_path / "_ext.html.j2").read_text())
    monkeypatch.setattr(render, "_templates", lambda: templates)
    (tmp_path / "ext.toml").write_text(SUITE)
    record = run_audit(
        Settings(
            model="demo",
            data=TINY_DATA,
            suites=(str(tmp_path / "ext.toml"),),
            report_dir=tmp_path / "report",
            base_dir=tmp_path,
            invocation_dir=tmp_path,
            bootstrap_resamples=0,
        )
    )
    verdicts = {c["id"]: c["verdict"] for c in record["claims"]}
    assert verdicts == {"shifted": "passed", "nothing-certified": "passed", "count": "passed"}
    shifted = next(e for e in record["evaluations"]["attacks"] if e["attack"] == "shift")
    assert shifted["params"] == {"sign": -1}
    message = next(c for c in record["claims"] if c["id"] == "nothing-certified")["message"]
    assert "a test certifier" in message
    assert "<p>ext: 3 claims</p>" in (tmp_path / "report" / "index.html").read_text()
    on_disk = json.loads((tmp_path / "report" / "results.json").read_text())
    assert on_disk["status"] == "passed"


def test_a_certifier_s_keys_are_refused_for_another_certifier(plugins: None) -> None:
    from audit.errors import ConfigError
    from audit.suite import parse_claim

    raw = {
        "id": "x",
        "kind": "certified",
        "certifier": "lipschitz",
        "norm": "l2",
        "eps": 0.1,
        "metric": "certified_fraction",
        "min": 0.0,
        "because": "no",
    }
    with pytest.raises(ConfigError, match="key 'because': only the nothing certifier"):
        parse_claim(raw, suite="s", index=0, source="s.toml")


THIRD_PARTY = """
from typing import ClassVar

from audit.attacks.base import Attack


class Zero(Attack):
    name = "zero"
    norms = ("linf", "l2")

    def run(self, images, labels, *, threat, ctx):
        return images


class Misnamed(Zero):
    name = "something-else"
"""


@pytest.fixture
def third_party(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    (tmp_path / "third_party_attacks.py").write_text(THIRD_PARTY)
    monkeypatch.syspath_prepend(str(tmp_path))
    points = [
        EntryPoint("zero", "third_party_attacks:Zero", "segaudit.attacks"),
        EntryPoint("misnamed", "third_party_attacks:Misnamed", "segaudit.attacks"),
    ]
    monkeypatch.setattr(
        audit.registry, "entry_points", lambda group: [p for p in points if p.group == group]
    )
    yield "third_party_attacks"
    sys.modules.pop("third_party_attacks", None)


def test_entry_points_are_listed_without_importing_and_loaded_by_name(third_party: str) -> None:
    registry: Registry[type[Attack]] = Registry("attack", "segaudit.attacks")
    assert registry.names() == ("zero", "misnamed")
    assert third_party not in sys.modules  # listed, not loaded
    assert registry.get("zero").name == "zero"
    assert third_party in sys.modules
    with pytest.raises(ValueError, match="entry point's name must be the attack's name"):
        registry.get("misnamed")
    with pytest.raises(KeyError, match="unknown attack 'nope'; known: zero, misnamed"):
        registry.get("nope")


def test_registration_twice_and_placement() -> None:
    class Item:
        def __init__(self, name: str) -> None:
            self.name = name

    registry: Registry[Item] = Registry("thing", "segaudit.test-nothing")
    a, b, c = Item("a"), Item("b"), Item("c")
    registry.register(a)
    registry.register(c)
    registry.register(b, before="c")
    assert registry.names() == ("a", "b", "c")
    registry.register(a)  # the same object again is harmless
    with pytest.raises(ValueError, match="thing 'a' registered twice"):
        registry.register(Item("a"))
    with pytest.raises(ValueError, match="no thing 'z' to place 'd' next to"):
        registry.register(Item("d"), after="z")
