"""The JSON Schema of the audit record (``results.json``) and the check against it.

The schema file (``audit/schemas/results.schema.json``, documented in
docs/results-schema.md) is the contract for everything that reads a record: the report,
``python -m audit.report``, CI scripts.  This module sits in the basic layer so that the
record writer and the report, which may import only basics, share it.  jsonschema is
imported on first use: the modules that import this one load on every run, and most runs
never validate.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from audit.errors import InvalidRecord
from audit.resources import results_schema_file


@lru_cache(maxsize=1)
def results_schema() -> dict[str, Any]:
    """The record's JSON Schema (draft 2020-12), as a mapping."""
    return json.loads(results_schema_file().read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def _validator() -> Any:
    import jsonschema

    schema = results_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)  # a broken schema file must not pass every record
    return cls(schema)


def validate_record(record: Any, *, source: str | None = None) -> None:
    """Raise :class:`InvalidRecord` unless ``record`` follows the record's JSON Schema.

    The message names where the most relevant error is, as a path into the record in which
    claims are named by node id (``claims["smoke::clean-miou"].verdict: 'maybe' is not one
    of [...]``), and how many more there are; ``source`` (a file name) leads it.
    """
    from jsonschema.exceptions import best_match

    errors = list(_validator().iter_errors(record))
    if not errors:
        return
    first = best_match(errors)
    path = json_path(record, list(first.absolute_path))
    message = f"{path}: {first.message}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more schema error{'s' if len(errors) > 2 else ''})"
    if source:
        message = f"{source}: {message}"
    raise InvalidRecord(message, path=path, count=len(errors))


def json_path(record: Any, parts: Sequence[str | int]) -> str:
    """``["claims", 0, "verdict"]`` -> ``claims["smoke::clean-miou"].verdict``: a claim by its
    node id, which survives reordering; other list items by index; the root is ``(record)``."""
    text = ""
    node = record
    for part in parts:
        if isinstance(part, int):
            item = node[part] if isinstance(node, list) and -len(node) <= part < len(node) else None
            nodeid = item.get("nodeid") if isinstance(item, dict) else None
            if text == "claims" and isinstance(nodeid, str):
                text += f"[{json.dumps(nodeid)}]"
            else:
                text += f"[{part}]"
        elif part.isidentifier():
            text += f".{part}" if text else part
        else:
            text += f"[{json.dumps(part)}]"
        node = _child(node, part)
    return text or "(record)"


def _child(node: Any, part: str | int) -> Any:
    if isinstance(node, dict):
        return node.get(part)
    if isinstance(node, list) and isinstance(part, int) and -len(node) <= part < len(node):
        return node[part]
    return None
