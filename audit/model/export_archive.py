"""Hand ``torch.export.load`` a copy of a ``.pt2`` archive that it can read without running code.

``torch.export.load`` (torch 2.14) runs code from the archive in several places, none of them
behind an option: it unpickles sample inputs with a fallback to ``weights_only=False``, loads
weights and tensor constants marked ``use_pickle`` with ``weights_only=False``, unpickles
opaque constants with ``pickle.loads``, falls back to an older layout whose state dict,
constants and sample inputs are unpickled the same way, loads AOTInductor libraries with
``dlopen``, and passes the graph's symbolic shape expressions to ``sympy.sympify``, which
evaluates them with ``eval``.  When the program is then turned into a module, guard code
stored in the archive is run with ``exec`` if sample inputs are present.

So the loader never gives torch the user's file.  :func:`sanitised_archive` reads the zip with
Python's ``zipfile`` (which only reads bytes) and writes a copy that holds only members whose
role it knows and that torch reads as JSON, text or raw tensor bytes: sample inputs are
emptied (torch then sets none, so no guard code is generated) and stored guard code is
dropped.  A member that torch would unpickle or execute, a member whose role is unknown (a
newer torch's layout), and a symbolic expression that is not a plain sympy expression are
refused with a :class:`ModelError` naming the file and the member, unless the user trusts the
file (``trust_pickle``): then they pass through to torch unchanged.

:func:`check_program_callables` then looks at the loaded graph: an argument that is a Python
function rather than a torch operator (a crafted archive can name ``os.popen`` there) would
be called when the model runs.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import tempfile
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

from audit.errors import ModelError

# Member names relative to the archive's top folder (torch/export/pt2_archive/constants.py).
# They are spelled out here rather than imported: a layout this module has not been taught
# must be refused, not followed.
_PLAIN_MEMBERS = frozenset(
    {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"}
)
_MODEL = re.compile(r"models/([^/]+)\.json")
_MODEL_FILE = "models/{}.json"
_SAMPLE_INPUTS = "data/sample_inputs/{}.pt"
_WEIGHTS_DIR = "data/weights/"
_CONSTANTS_DIR = "data/constants/"
_WEIGHTS_CONFIG = _WEIGHTS_DIR + "{}_weights_config.json"
_CONSTANTS_CONFIG = _CONSTANTS_DIR + "{}_constants_config.json"
_EXTRA_DIR = "extra/"
_AOTINDUCTOR_DIR = "data/aotinductor/"
# How torch reads a constant depends on its file name's prefix.
_TENSOR_CONSTANT = "tensor_"
_TORCHBIND_CONSTANT = "custom_obj_"
_OPAQUE_CONSTANT = "opaque_obj_"
# How many refused members an error message lists.
_SHOWN = 4

_TRUST_HINT = (
    "If you trust the file, pass --audit-trust-pickle (or set trust_pickle = true under "
    "[tool.segaudit])"
)


@dataclass
class _Plan:
    """What to do with each member: copy it, replace its bytes, or refuse the file."""

    root: str
    replace: dict[str, bytes] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)


@contextmanager
def sanitised_archive(path: Path, *, trust_pickle: bool) -> Iterator[IO[bytes]]:
    """A temporary copy of the ``.pt2`` archive at ``path`` that is safe to ``torch.export.load``.

    Raises :class:`ModelError` naming ``path`` and the members at fault when the archive holds
    something torch would unpickle or execute (allowed with ``trust_pickle``), is not a
    well-formed zip, or has members outside its top folder or twice.
    """
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelError(
            f"cannot read torch.export program {path} as a zip archive: {exc}"
        ) from exc
    with archive, tempfile.TemporaryFile() as copy:
        plan = _plan(path, archive, trust_pickle)
        if plan.refused:
            shown = "; ".join(plan.refused[:_SHOWN])
            more = f"; and {len(plan.refused) - _SHOWN} more" if len(plan.refused) > _SHOWN else ""
            raise ModelError(
                f"model file {path} is a torch.export program with members that "
                f"torch.export.load would unpickle or run as code: {shown}{more}. SegAudit "
                f"refuses it, since that code would run on your machine. {_TRUST_HINT}; better, "
                "export it again from a model whose weights and constants are plain tensors."
            )
        try:
            _write_copy(archive, plan, copy)
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
            raise ModelError(
                f"cannot read torch.export program {path} (truncated or corrupt?): {exc}"
            ) from exc
        copy.seek(0)
        yield copy


def _plan(path: Path, archive: zipfile.ZipFile, trust_pickle: bool) -> _Plan:
    names = archive.namelist()
    root = _single_root(path, names)
    plan = _Plan(root)
    members = {name[len(root) :] for name in names}
    models = sorted(match[1] for m in members if (match := _MODEL.fullmatch(m)))
    # Payload files are identified by the configs that point at them; everything else is
    # identified by its name.
    payloads: set[str] = set()
    for model in models:
        for kind in _PAYLOAD_KINDS:
            payloads |= _payloads(path, archive, plan, members, kind, model, trust_pickle)
        plan.replace[root + _MODEL_FILE.format(model)] = _model_json(
            path, archive, root + _MODEL_FILE.format(model), trust_pickle
        )
        # An empty sample-inputs member makes torch set none, so it neither unpickles
        # them nor generates guard code from them.
        plan.replace[root + _SAMPLE_INPUTS.format(model)] = b""
    known = (
        _PLAIN_MEMBERS
        | payloads
        | {_MODEL_FILE.format(m) for m in models}
        | {_SAMPLE_INPUTS.format(m) for m in models}
        | {_WEIGHTS_CONFIG.format(m) for m in models}
        | {_CONSTANTS_CONFIG.format(m) for m in models}
    )
    for member in sorted(members - known):
        if member.startswith(_EXTRA_DIR):
            continue  # torch reads extra files as text
        if trust_pickle:
            continue
        plan.refused.append(f"{root}{member} ({_unknown_role(member, models)})")
    return plan


def _single_root(path: Path, names: list[str]) -> str:
    """The one top folder every member sits in, as torch's reader expects."""
    twice = sorted(name for name, count in Counter(names).items() if count > 1)
    if twice:
        raise ModelError(
            f"model file {path} is a zip archive with members stored twice "
            f"({', '.join(twice[:_SHOWN])}); a torch.export program has each member once, and "
            "a reader may pick either copy, so SegAudit refuses it"
        )
    roots = {name.split("/", 1)[0] + "/" if "/" in name else name for name in names}
    if len(roots) != 1 or not next(iter(roots)).endswith("/"):
        shown = ", ".join(sorted(roots)[:_SHOWN])
        raise ModelError(
            f"model file {path} is not a well-formed torch.export program: its members must all "
            f"lie in one top folder, but the archive has {shown} at the top; torch.export.load "
            "would read such a file with its legacy loader, which unpickles its contents"
        )
    return next(iter(roots))


def _unknown_role(member: str, models: list[str]) -> str:
    if member.startswith(_AOTINDUCTOR_DIR):
        return "AOTInductor compiled code, which torch loads as a shared library"
    if member in {f"{_WEIGHTS_DIR}{m}.pt" for m in models}:
        return "weights in the legacy pickled format"
    if member in {f"{_CONSTANTS_DIR}{m}.pt" for m in models}:
        return "constants in the legacy pickled format"
    if member.startswith((_WEIGHTS_DIR, _CONSTANTS_DIR)):
        return "a payload no weights or constants config refers to"
    return "a member SegAudit does not know how torch reads"


def _read_json(path: Path, archive: zipfile.ZipFile, member: str) -> Any:
    try:
        return json.loads(archive.read(member))
    except (ValueError, RecursionError) as exc:
        raise ModelError(
            f"model file {path}: archive member {member} is not valid JSON: {exc}"
        ) from exc
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        raise ModelError(
            f"cannot read archive member {member} of model file {path}: {exc}"
        ) from exc


def _config_entries(path: Path, archive: zipfile.ZipFile, member: str) -> dict[str, dict]:
    data = _read_json(path, archive, member)
    entries = data.get("config") if isinstance(data, dict) else None
    if not isinstance(entries, dict) or not all(
        isinstance(e, dict) and isinstance(e.get("path_name"), str) for e in entries.values()
    ):
        raise ModelError(
            f"model file {path}: archive member {member} is not a torch.export payload config "
            "(expected {'config': {name: {'path_name': ..., 'use_pickle': ...}}})"
        )
    return entries


@dataclass(frozen=True)
class _PayloadKind:
    """Payload files named by a per-model config: the config, the folder of the files, and
    why torch would unpickle one (``None`` where it reads raw tensor bytes)."""

    config: str
    directory: str
    pickled: Callable[[str, dict], str | None]


def _pickled_weight(name: str, entry: dict) -> str | None:
    if entry.get("use_pickle") is False:
        return None
    return f"weight {name!r}, stored pickled"


def _pickled_constant(name: str, entry: dict) -> str | None:
    file_name = entry["path_name"]
    if file_name.startswith(_TENSOR_CONSTANT):
        if entry.get("use_pickle") is False:
            return None
        kind = "a tensor stored pickled"
    elif file_name.startswith(_TORCHBIND_CONSTANT):
        kind = "a pickled TorchBind object"
    elif file_name.startswith(_OPAQUE_CONSTANT):
        kind = "a pickled Python object"
    else:
        kind = "of a kind SegAudit does not know how torch reads"
    return f"constant {name!r}, {kind}"


_PAYLOAD_KINDS = (
    _PayloadKind(_WEIGHTS_CONFIG, _WEIGHTS_DIR, _pickled_weight),
    _PayloadKind(_CONSTANTS_CONFIG, _CONSTANTS_DIR, _pickled_constant),
)


def _payloads(
    path: Path,
    archive: zipfile.ZipFile,
    plan: _Plan,
    members: set[str],
    kind: _PayloadKind,
    model: str,
    trust_pickle: bool,
) -> set[str]:
    """The files of ``kind`` that ``model``'s config names; pickled ones are refused unless
    trusted."""
    config = kind.config.format(model)
    if config not in members:
        return set()  # torch reads none (and, without weights, refuses the program itself)
    named = set()
    for name, entry in _config_entries(path, archive, plan.root + config).items():
        member = kind.directory + entry["path_name"]
        named.add(member)
        why = kind.pickled(name, entry)
        if why is not None and not trust_pickle:
            plan.refused.append(f"{plan.root}{member} ({why})")
    return named


def _model_json(path: Path, archive: zipfile.ZipFile, member: str, trust_pickle: bool) -> bytes:
    """The program's JSON with stored guard code dropped and its expressions checked."""
    program = _read_json(path, archive, member)
    if not isinstance(program, dict):
        raise ModelError(f"model file {path}: archive member {member} is not a serialized program")
    if not trust_pickle:
        for expression in _expressions(program):
            problem = _expression_problem(expression)
            if problem:
                raise ModelError(
                    f"model file {path}: archive member {member} holds the symbolic shape "
                    f"expression {expression[:120]!r}, which {problem}; torch.export.load "
                    "evaluates these expressions as Python code (sympy.sympify), so SegAudit "
                    f"refuses the file. {_TRUST_HINT}."
                )
    # Guard code is Python source that torch exec()s; with no sample inputs torch does not
    # use it, and dropping it keeps a future torch from doing so either.
    program["guards_code"] = []
    return json.dumps(program).encode()


def _expressions(node: Any) -> Iterator[str]:
    # Walked generically rather than through the schema, so that an expression in a field
    # this module does not know is still checked.
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key == "expr_str":
                    yield value if isinstance(value, str) else repr(value)
                else:
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)


# What torch writes (sympy's srepr of shape expressions): constructors of numbers, symbols,
# arithmetic, comparisons and torch's own integer functions, with literal arguments.
_FUNCTIONS = frozenset(
    {
        # sympy
        "Symbol", "Dummy", "Integer", "Float", "Rational", "Add", "Mul", "Pow", "Mod",
        "Max", "Min", "Abs", "floor", "ceiling", "sign", "sqrt", "Piecewise", "ExprCondPair",
        "Equality", "Unequality", "StrictLessThan", "LessThan", "StrictGreaterThan",
        "GreaterThan", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not", "Xor",
        # torch.utils._sympy.functions
        "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt",
        "FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow",
        "FloatTrueDiv", "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat",
        "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "Identity",
    }
)  # fmt: skip
_TORCH_FUNCTION_FAMILIES = re.compile(r"(OpaqueUnaryFn|BitwiseFn)_[a-z0-9_]+")
_CONSTANTS = frozenset({"oo", "zoo", "nan", "int_oo", "true", "false", "pi", "E"})
# torch's shape symbols: s0, u3, zuf0, ...
_SYMBOL = re.compile(r"[a-z]+[0-9]+")
_STRING = re.compile(r"[A-Za-z0-9_.+\-]*")
_OPERATORS = (
    ast.Expression, ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp, ast.Add, ast.Sub,
    ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.USub, ast.UAdd, ast.Not,
    ast.Invert, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.And, ast.Or,
    ast.Load, ast.Tuple, ast.keyword,
)  # fmt: skip


def _expression_problem(expression: str) -> str:
    """Why ``expression`` is not a plain sympy expression, or ``""`` when it is one."""
    try:
        tree = ast.parse(expression, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return "is not a Python expression"
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or not _known_function(node.func.id):
                return f"calls {ast.unparse(node.func)!r}, which is not a sympy constructor"
        elif isinstance(node, ast.Name):
            known = _known_function(node.id) or node.id in _CONSTANTS
            if not (known or _SYMBOL.fullmatch(node.id)):
                return f"uses the name {node.id!r}"
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, str) and not _STRING.fullmatch(node.value):
                return f"holds the string {node.value!r}"
            if not isinstance(node.value, int | float | str | bool | type(None)):
                return f"holds the literal {node.value!r}"
        elif not isinstance(node, _OPERATORS):
            return f"uses Python syntax ({type(node).__name__}) that sympy expressions do not"
    return ""


def _known_function(name: str) -> bool:
    return name in _FUNCTIONS or bool(_TORCH_FUNCTION_FAMILIES.fullmatch(name))


def _write_copy(archive: zipfile.ZipFile, plan: _Plan, copy: IO[bytes]) -> None:
    with zipfile.ZipFile(copy, "w", compression=zipfile.ZIP_STORED) as out:
        for info in archive.infolist():
            target = zipfile.ZipInfo(info.filename, date_time=info.date_time)
            target.compress_type = zipfile.ZIP_STORED
            if info.filename in plan.replace:
                out.writestr(target, plan.replace[info.filename])
                continue
            target.file_size = info.file_size
            with archive.open(info) as source, out.open(target, "w") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)


def check_program_callables(program: torch.export.ExportedProgram, path: Path) -> None:
    """Refuse a program whose graph passes a Python callable other than a torch operator.

    torch's verifier checks what each node calls, but not what it passes: a higher-order
    operator such as ``wrap_with_set_grad_enabled`` calls the function it is given, and
    a crafted archive can name any function reachable from ``torch`` there.
    """
    allowed = (torch._ops.OpOverload, torch._ops.OpOverloadPacket, torch._ops.HigherOrderOperator)
    for module in program.graph_module.modules():
        if not isinstance(module, torch.fx.GraphModule):
            continue
        for node in module.graph.nodes:
            for value in _flatten((node.args, node.kwargs)):
                if callable(value) and not isinstance(value, allowed):
                    name = getattr(value, "__qualname__", type(value).__name__)
                    raise ModelError(
                        f"model file {path}: node {node.name!r} of the exported graph passes "
                        f"the Python function {getattr(value, '__module__', '?')}.{name} to "
                        f"{node.target}; an exported model only passes torch operators, and "
                        "running this one would call that function, so SegAudit refuses it"
                    )


def _flatten(value: Any) -> Iterator[Any]:
    if isinstance(value, list | tuple):
        for item in value:
            yield from _flatten(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _flatten(item)
    elif isinstance(value, slice):
        yield from _flatten((value.start, value.stop, value.step))
    else:
        yield value
