"""Attacks by name: SegAudit's own, and adapters to torchattacks, foolbox and adv-lib.

A claim names an attack as ``pgd`` (native) or ``<library>:<Name>`` (``torchattacks:PGD``,
``foolbox:LinfPGD``, ``advlib:alma_prox``).  Both kinds are registered plug-ins
(:mod:`audit.registry`): native attacks as classes, libraries as adapters.  A library is
imported only when one of its attacks runs, and a missing one fails that claim alone.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from audit.errors import AttackUnavailable
from audit.registry import Registry

if TYPE_CHECKING:
    from audit.attacks.base import Attack, MinNormAttack

#: SegAudit's own attacks (subclasses of :class:`~audit.attacks.base.Attack`) by the name a
#: claim uses; each class declares its name, norms and parameters with their defaults
#: once.  A new one is a module in this package using :func:`register_attack`, or a third
#: party's ``segaudit.attacks`` entry point.
ATTACKS: Registry[type[Attack]] = Registry("attack", "segaudit.attacks", builtins=[__name__])


def register_attack(cls: type[Attack]) -> type[Attack]:
    """Class decorator: make ``cls`` available as ``attack = "<cls.name>"`` in claims."""
    return ATTACKS.register(cls)


@dataclass(frozen=True)
class AttackLibrary:
    """An attack library behind an adapter: claims name its attacks ``<name>:<attack>``.

    ``module`` implements ``build(attack, params)`` (and, for minimal-norm attacks,
    ``build_min_norm``) and ``SUPPORTED`` (attack name -> norm or norms); it imports the
    library, so it is imported only when one of its attacks runs.
    """

    name: str
    module: str
    #: the pip extra that installs the library
    extra: str

    def load(self, attack: str = "") -> ModuleType:
        """The adapter module; :class:`AttackUnavailable` (one claim's error) when the
        library is not importable here."""
        try:
            return importlib.import_module(self.module)
        except ImportError as exc:
            raise AttackUnavailable(
                f"attack {attack or self.name!r} needs the {self.name} library, which is not "
                f"importable here ({exc}); install it with: pip install "
                f"'pytest-segaudit[{self.extra}]'"
            ) from exc

    def supported(self) -> dict[str, tuple[str, ...]]:
        """Every attack the adapter supports on segmentation outputs, with its norms."""
        table = self.load().SUPPORTED
        return {k: (v,) if isinstance(v, str) else tuple(v) for k, v in table.items()}


#: attack libraries by prefix; third parties add one through ``segaudit.attack_libraries``
LIBRARIES: Registry[AttackLibrary] = Registry("attack library", "segaudit.attack_libraries")
for _library in (
    AttackLibrary("torchattacks", "audit.attacks.adapters.torchattacks", "attacks"),
    AttackLibrary("foolbox", "audit.attacks.adapters.foolbox", "attacks"),
    AttackLibrary("advlib", "audit.attacks.adapters.advlib", "advlib"),
):
    LIBRARIES.register(_library)

#: parameters a claim may set at top level; each attack says which of them it accepts
COMMON_PARAMS: tuple[str, ...] = ("steps", "step_size", "restarts", "random_start")


def native_attack(name: str) -> type[Attack]:
    """SegAudit's own attack ``name`` (a class with ``norms`` and ``defaults``)."""
    return ATTACKS.get(name)


def check_name(name: Any) -> str:
    """The canonical attack name, or ``ValueError`` saying which forms are accepted."""
    forms = (
        f"one of {', '.join(ATTACKS.names())}, or <library>:<attack> with library "
        f"{', '.join(LIBRARIES.names())} (e.g. 'torchattacks:PGD', 'foolbox:LinfPGD', "
        "'advlib:alma_prox')"
    )
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"expected an attack name ({forms}), got {name!r}")
    name = name.strip()
    if ":" in name:
        library, _, attack = name.partition(":")
        if library.lower() not in LIBRARIES or not attack:
            raise ValueError(f"unknown attack {name!r}; expected {forms}")
        return f"{library.lower()}:{attack}"
    if name.lower() not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; expected {forms}")
    return name.lower()


def library_of(name: str) -> str:
    """``native`` or the adapter prefix of a canonical name."""
    return name.partition(":")[0] if ":" in name else "native"


def build_attack(name: str, params: Mapping[str, Any]) -> Attack:
    """An attack at a fixed budget, ready to call; ``TypeError`` for a parameter it lacks."""
    name = check_name(name)
    library = library_of(name)
    if library == "native":
        return native_attack(name)(**params)
    return LIBRARIES.get(library).load(name).build(name.partition(":")[2], dict(params))


def build_min_norm_attack(name: str, params: Mapping[str, Any]) -> MinNormAttack:
    """A minimal-norm attack (adv-lib's segmentation attacks), ready to call."""
    name = check_name(name)
    library = library_of(name)
    module = LIBRARIES.get(library).load(name) if library != "native" else None
    if module is None or not hasattr(module, "build_min_norm"):
        raise AttackUnavailable(
            f"attack {name!r} is not a minimal-norm attack; use one of "
            "advlib:alma_prox, advlib:dag, advlib:pdgd, advlib:pdpgd, advlib:asma"
        )
    return module.build_min_norm(name.partition(":")[2], dict(params))
