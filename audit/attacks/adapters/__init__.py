"""Adapters that run other libraries' attacks on dense outputs, behind the :class:`Attack` API.

Each adapter module imports its library lazily and exposes ``build(name, params)``
(an :class:`~audit.attacks.base.Attack`) and, for minimal-norm libraries,
``build_min_norm(name, params)`` (a :class:`~audit.attacks.base.MinNormAttack`).
"""
