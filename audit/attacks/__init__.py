"""Attacks by name: SegAudit's own, and adapters to torchattacks, foolbox and adv-lib.

A claim names an attack as ``pgd`` (native) or ``<library>:<Name>`` (``torchattacks:PGD``,
``foolbox:LinfPGD``, ``advlib:alma_prox``).  Names are checked here without importing torch
or any attack library, so a suite file is validated before anything heavy loads; the
library is imported only when the attack runs, and a missing one fails that claim alone.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from audit.errors import AttackUnavailable

if TYPE_CHECKING:
    from audit.attacks.base import Attack, MinNormAttack

#: SegAudit's own attacks (audit.attacks.native) by the name a claim uses: the norms each
#: implements and the parameters it accepts (a test keeps this in step with the classes)
NATIVE_SPECS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "fgsm": (("linf",), ()),
    "fgsm-ll": (("linf",), ()),
    "ifgsm": (("linf",), ("steps", "step_size")),
    "ifgsm-ll": (("linf",), ("steps", "step_size")),
    "pgd": (("linf", "l2"), ("steps", "step_size", "restarts", "random_start")),
    "segpgd": (("linf", "l2"), ("steps", "step_size", "restarts", "random_start")),
    "cospgd": (("linf", "l2"), ("steps", "step_size", "restarts", "random_start")),
    "noise": (("linf", "l2"), ()),
}
NATIVE_NAMES: tuple[str, ...] = tuple(NATIVE_SPECS)

#: adapter prefix -> (module implementing it, pip extra that installs the library)
LIBRARIES: dict[str, tuple[str, str]] = {
    "torchattacks": ("audit.attacks.adapters.torchattacks", "attacks"),
    "foolbox": ("audit.attacks.adapters.foolbox", "attacks"),
    "advlib": ("audit.attacks.adapters.advlib", "advlib"),
}

#: parameters a claim may set at top level; each attack says which of them it accepts
COMMON_PARAMS: tuple[str, ...] = ("steps", "step_size", "restarts", "random_start")


def check_name(name: Any) -> str:
    """The canonical attack name, or ``ValueError`` saying which forms are accepted."""
    forms = (
        f"one of {', '.join(NATIVE_NAMES)}, or <library>:<attack> with library "
        f"{', '.join(LIBRARIES)} (e.g. 'torchattacks:PGD', 'foolbox:LinfPGD', 'advlib:alma_prox')"
    )
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"expected an attack name ({forms}), got {name!r}")
    name = name.strip()
    if ":" in name:
        library, _, attack = name.partition(":")
        if library.lower() not in LIBRARIES or not attack:
            raise ValueError(f"unknown attack {name!r}; expected {forms}")
        return f"{library.lower()}:{attack}"
    if name.lower() not in NATIVE_NAMES:
        raise ValueError(f"unknown attack {name!r}; expected {forms}")
    return name.lower()


def library_of(name: str) -> str:
    """``native`` or the adapter prefix of a canonical name."""
    return name.partition(":")[0] if ":" in name else "native"


def _adapter(library: str, name: str) -> Any:
    module_name, extra = LIBRARIES[library]
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise AttackUnavailable(
            f"attack {name!r} needs the {library} library, which is not importable here "
            f"({exc}); install it with: pip install 'pytest-segaudit[{extra}]'"
        ) from exc


def build_attack(name: str, params: Mapping[str, Any]) -> Attack:
    """An attack at a fixed budget, ready to call; ``TypeError`` for a parameter it lacks."""
    name = check_name(name)
    library = library_of(name)
    if library == "native":
        from audit.attacks.native import NATIVE_ATTACKS

        return NATIVE_ATTACKS[name](**params)
    return _adapter(library, name).build(name.partition(":")[2], dict(params))


def build_min_norm_attack(name: str, params: Mapping[str, Any]) -> MinNormAttack:
    """A minimal-norm attack (adv-lib's segmentation attacks), ready to call."""
    name = check_name(name)
    library = library_of(name)
    module = _adapter(library, name) if library != "native" else None
    if module is None or not hasattr(module, "build_min_norm"):
        raise AttackUnavailable(
            f"attack {name!r} is not a minimal-norm attack; use one of "
            "advlib:alma_prox, advlib:dag, advlib:pdgd, advlib:pdpgd, advlib:asma"
        )
    return module.build_min_norm(name.partition(":")[2], dict(params))
