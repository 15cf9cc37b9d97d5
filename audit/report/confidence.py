"""The report's "Environment and tool confidence" section: what the audit ran on, and how far
the harness's own checks vouch for the numbers.

Hardware, operating system, threads, determinism switches, seed, SegAudit's version and
commit, every library whose code ran; then the self-checks: pickle trust, the attack
diagnostics (which flagged, which were clear, and which could not apply: a check that had
nothing to judge is never shown as clear), the certificate soundness checks and where the
Lipschitz constant came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from audit.report.accessors import as_list, fmt_pickle_trust, mapping, recorded
from audit.report.format import MISSING, fmt_any, fmt_count, fmt_number

_CHECK_STATUS = {
    "flagged": ("FLAGGED", "fail"),
    "clear": ("CLEAR", "pass"),
    "not applicable": ("COULD NOT APPLY", "notrun"),
}


def _source(env: Mapping[str, Any], versions: Mapping[str, Any]) -> str:
    source = mapping(env.get("segaudit_source"))
    text = fmt_any(versions.get("segaudit"))
    if source.get("commit"):
        dirty = " with uncommitted changes" if source.get("dirty") is True else ""
        text += f" (commit {source['commit']}{dirty}, from the {fmt_any(source.get('from'))})"
    return text


def _gpus(env: Mapping[str, Any]) -> str:
    gpus = [mapping(g) for g in as_list(env.get("gpus"))]
    if not gpus:
        return "none"
    return "; ".join(
        f"{fmt_any(g.get('name'))} ({fmt_any(g.get('memory_gib'))} GiB, "
        f"compute {fmt_any(g.get('capability'))})"
        for g in gpus
    )


def _determinism(provenance: Mapping[str, Any], env: Mapping[str, Any]) -> str:
    if not env:
        return MISSING
    parts = [
        f"seed {fmt_any(provenance.get('seed'))}",
        "deterministic algorithms "
        + ("on" if env.get("deterministic_algorithms") is True else "off"),
        f"cuDNN deterministic {fmt_any(env.get('cudnn_deterministic'))}",
        f"cuDNN benchmark {fmt_any(env.get('cudnn_benchmark'))}",
        f"float32 matmul precision {fmt_any(env.get('float32_matmul_precision'))}",
    ]
    return ", ".join(parts)


def _platform_rows(results: Mapping[str, Any]) -> list[dict[str, str]]:
    provenance = mapping(results.get("provenance"))
    env = mapping(provenance.get("environment"))
    versions = mapping(provenance.get("versions"))
    rows = [
        ("SegAudit", _source(env, versions)),
        ("Device used", fmt_any(provenance.get("device"))),
        ("CPU", f"{fmt_any(env.get('cpu'))} ({fmt_any(env.get('cpu_count'))} logical cores)"),
        ("GPU", _gpus(env) if env else MISSING),
        ("CUDA / cuDNN", f"{fmt_any(env.get('cuda'))} / {fmt_any(env.get('cudnn'))}"),
        ("Operating system", fmt_any(env.get("os"))),
        ("Python", fmt_any(env.get("python") or versions.get("python"))),
        (
            "Threads",
            f"{fmt_any(env.get('torch_threads'))} intra-op, "
            f"{fmt_any(env.get('torch_interop_threads'))} inter-op",
        ),
        ("Determinism", _determinism(provenance, env)),
        ("Batch size", fmt_any(provenance.get("batch_size"))),
        ("Attack precision", fmt_any(provenance.get("attack_precision", "float32"))),
        ("Processes", _processes(provenance)),
        ("Host", fmt_any(provenance.get("hostname"))),
    ]
    return [{"label": label, "value": value} for label, value in rows]


def _processes(provenance: Mapping[str, Any]) -> str:
    """One process, or the torchrun ranks and the images each covered."""
    distributed = mapping(provenance.get("distributed"))
    if not distributed:
        return "one process"
    shards = ", ".join(
        f"rank {fmt_any(s.get('rank'))}: images {fmt_any(s.get('start'))} to "
        f"{fmt_any(s.get('stop'))}"
        for s in map(mapping, as_list(distributed.get("shards")))
    )
    return (
        f"{fmt_any(distributed.get('world_size'))} torchrun ranks over "
        f"{fmt_any(distributed.get('backend'))} ({shards}; stop exclusive)"
    )


def _libraries(provenance: Mapping[str, Any]) -> list[dict[str, str]]:
    versions = dict(mapping(provenance.get("versions")))
    for name, value in mapping(provenance.get("libraries")).items():
        versions.setdefault(name, value)
    return [
        {"name": str(name), "version": fmt_any(value) if value is not None else "not installed"}
        for name, value in sorted(versions.items(), key=lambda item: str(item[0]).lower())
    ]


def _diagnostic_checks(results: Mapping[str, Any]) -> list[dict[str, str]]:
    expects = mapping(results.get("diagnostic_checks"))
    coverage = mapping(results.get("diagnostic_coverage"))
    rows = []
    for check in dict.fromkeys([*expects, *coverage]):
        entry = mapping(coverage.get(check))
        status = entry.get("status")
        label, css = _CHECK_STATUS.get(status, ("NOT RECORDED", "unknown"))
        if status == "clear":
            detail = f"judged {fmt_count(entry.get('evaluations'))} evaluation(s), found nothing"
        elif status == "flagged":
            detail = "see the diagnostics under Incidents and deviations"
        elif status == "not applicable":
            detail = fmt_any(entry.get("reason"))
        else:
            detail = "the record does not say whether this check could judge anything"
        rows.append(
            {
                "check": str(check),
                "expects": fmt_any(expects.get(check)),
                "status": label,
                "css": css,
                "detail": detail,
            }
        )
    return rows


def _guard(results: Mapping[str, Any]) -> str:
    """What the model guard vouches for: every attack and minimal-norm evaluation in the record
    ran under it, and one that changed the model would have ended in an error, not an entry."""
    attacks = [
        e for e in as_list(recorded(results, "attacks")) if mapping(e).get("family") != "random"
    ]
    searches = as_list(recorded(results, "min_norm"))
    if not attacks and not searches:
        return "no attack ran, so nothing could change the model"
    return (
        f"{len(attacks)} attack and {len(searches)} minimal-norm evaluation(s) left the model's "
        "weights, buffers, gradients and train/eval flags as they found them (an evaluation "
        "that changed them ends in an error and is not recorded)"
    )


def _soundness_rows(results: Mapping[str, Any]) -> list[dict[str, str]]:
    rows = []
    for entry in as_list(recorded(results, "soundness")):
        entry = mapping(entry)
        for check in as_list(entry.get("checks")):
            check = mapping(check)
            rows.append(
                {
                    "claim": fmt_any(entry.get("claim")),
                    "attack": fmt_any(check.get("attack")),
                    "certified": fmt_count(check.get("certified_pixels")),
                    "flipped": fmt_count(check.get("flipped_certified")),
                    "tightness": fmt_number(check.get("tightness_median")),
                }
            )
    return rows


def _constants(results: Mapping[str, Any]) -> list[dict[str, str]]:
    seen: dict[str, dict[str, str]] = {}
    for entry in [
        *as_list(recorded(results, "certificates")),
        *as_list(recorded(results, "soundness")),
    ]:
        lipschitz = mapping(mapping(entry).get("lipschitz"))
        if lipschitz.get("value") is None:
            continue
        key = f"{lipschitz.get('kind')}:{lipschitz.get('value')}"
        seen.setdefault(
            key,
            {
                "value": fmt_number(lipschitz.get("value")),
                "kind": fmt_any(lipschitz.get("kind")),
                "description": fmt_any(lipschitz.get("description")),
            },
        )
    return list(seen.values())


def build_confidence(results: Mapping[str, Any]) -> dict[str, Any]:
    provenance = mapping(results.get("provenance"))
    return {
        "platform": _platform_rows(results),
        "environment_recorded": bool(mapping(provenance.get("environment"))),
        "pickle_trust": fmt_pickle_trust(provenance.get("trust_pickle")),
        "pickle_trusted": mapping(provenance.get("trust_pickle")).get("enabled") is True,
        "guard": _guard(results),
        "checks": _diagnostic_checks(results),
        "soundness": _soundness_rows(results),
        "constants": _constants(results),
        "libraries": _libraries(provenance),
    }
