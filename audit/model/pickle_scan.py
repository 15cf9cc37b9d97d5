"""Name the globals a pickle refers to by reading its opcodes, without unpickling it.

A pickle runs code only through the globals it imports (a function or class, called while
unpickling), so listing them says whether a pickled member could do more than rebuild tensors,
and lets an error name the member and the global at fault.  TorchScript archives are checked
this way before ``torch.jit.load`` reads them: its C++ unpickler already refuses everything but
tensors, containers and TorchScript classes, but its error names neither.
"""

from __future__ import annotations

import pickletools
import zipfile
from pathlib import Path

# Opcodes that push a string the next STACK_GLOBAL may use as module or name.
_STRINGS = frozenset(
    {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING",
     "BINSTRING", "STRING"}
)  # fmt: skip
# Opcodes that leave the stack as it was, as far as STACK_GLOBAL's operands are concerned.
_NEUTRAL = frozenset({"MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "PROTO", "FRAME"})
_GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})
#: what a global whose name is computed on the stack (not a plain string) is reported as
UNKNOWN_GLOBAL = "<a global whose name is computed while unpickling>"

# Globals TorchScript's C++ unpickler resolves (torch/csrc/jit/serialization/unpickler.cpp):
# tensor and storage rebuilders, a few containers, and TorchScript classes (__torch__.*)
# compiled from the archive's own code/ folder.
_TORCHSCRIPT_PACKAGES = frozenset({"__torch__", "torch"})
_TORCHSCRIPT_GLOBALS = frozenset(
    {"collections.OrderedDict", "builtins.complex", "builtins.set", "__builtin__.complex",
     "__builtin__.set"}
)  # fmt: skip
_LEGACY_MAIN = "__main__."  # TensorID, IntList, ... in files from torch 1.0


def pickle_globals(data: bytes) -> list[str]:
    """``module.name`` of each global the pickle ``data`` imports, in order.

    A name built on the stack rather than stored as a string is :data:`UNKNOWN_GLOBAL`.
    Raises ``ValueError`` when ``data`` is not a well-formed pickle.
    """
    found: list[str] = []
    # The string (or None for anything else) each recent push left on the stack, and the
    # memo, are tracked only as far as STACK_GLOBAL needs them.
    recent: list[str | None] = []
    memo: dict[int, str | None] = {}
    for opcode, arg, _ in pickletools.genops(data):
        name = opcode.name
        if name in ("GLOBAL", "INST"):
            module, _, qualname = str(arg).partition(" ")
            found.append(f"{module}.{qualname}")
            recent.append(None)
        elif name == "STACK_GLOBAL":
            module, qualname = ([None, None, *recent])[-2:]
            if isinstance(module, str) and isinstance(qualname, str):
                found.append(f"{module}.{qualname}")
            else:
                found.append(UNKNOWN_GLOBAL)
            recent.append(None)
        elif name in _STRINGS:
            recent.append(arg if isinstance(arg, str) else bytes(arg).decode("latin-1"))
        elif name in _GETS:
            recent.append(memo.get(int(arg)))
        elif name == "MEMOIZE":
            memo[len(memo)] = recent[-1] if recent else None
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(arg)] = recent[-1] if recent else None
        elif name not in _NEUTRAL:
            recent.append(None)
        del recent[:-2]
    return found


def torchscript_foreign_globals(path: Path) -> list[tuple[str, str]]:
    """``(member, global)`` for each global in a pickled member of the TorchScript archive at
    ``path`` that TorchScript does not use; an unreadable pickle counts as one.
    """
    foreign: list[tuple[str, str]] = []
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".pkl"):
                continue
            try:
                names = pickle_globals(archive.read(info))
            except (ValueError, EOFError, RecursionError) as exc:
                foreign.append((info.filename, f"<not a well-formed pickle: {exc}>"))
                continue
            foreign.extend((info.filename, n) for n in names if not _torchscript_global(n))
    return foreign


def _torchscript_global(name: str) -> bool:
    package = name.split(".", 1)[0]
    return (
        package in _TORCHSCRIPT_PACKAGES
        or name in _TORCHSCRIPT_GLOBALS
        or name.startswith(_LEGACY_MAIN)
    )
