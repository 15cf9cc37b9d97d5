"""Evaluations: the model run over the audit's data, reduced to additive state and records.

One module per evaluation: ``clean`` (predictions on unperturbed images), ``attack``
(an attack at a threat model, and the noise baseline), ``min_norm`` (minimal-norm radii),
``lipschitz`` (where a certificate's constant comes from), ``certified`` (Lipschitz
certificates and randomized smoothing), ``soundness`` (attacks against certificates), and
``guard`` (proof that an evaluation left the model unchanged).  Each asks the engine to
compute it once per key and to log it; none words a verdict (that is the claims' job).

The result classes that may be kept on disk across runs (``--audit-cache``) are listed
here, in one place, as the store's whitelist (:func:`audit.store.register`).  The searches
(``corruption_search``, ``invariance``) are not: they replay Hypothesis' example database,
which their cache key does not cover.
"""

import audit.evaluations.shards  # noqa: F401 (registers how shard results merge)
from audit import store
from audit.certify.falsify import LowerBound
from audit.certify.joint import IoUProfile
from audit.certify.lipschitz.model_bound import LipschitzBound
from audit.certify.lipschitz.values import LayerBound
from audit.evaluations.attack import (
    AdversarialExample,
    AttackEvaluation,
    GradientHealth,
    evaluate_attack,
    evaluate_noise,
)
from audit.evaluations.certified import (
    CertifiedExample,
    LipschitzCertification,
    SmoothingCertification,
    certify_lipschitz,
    certify_smoothing,
)
from audit.evaluations.clean import CleanEvaluation, Example, evaluate_clean
from audit.evaluations.corruption import CorruptionEvaluation
from audit.evaluations.lipschitz import LipschitzSource, resolve_lipschitz
from audit.evaluations.min_norm import MinNormEvaluation, evaluate_min_norm
from audit.evaluations.soundness import AttackCheck, SoundnessResult, check_soundness
from audit.threat import Epsilon, ThreatModel

store.register(
    CleanEvaluation,
    Example,
    AttackEvaluation,
    AdversarialExample,
    GradientHealth,
    ThreatModel,
    Epsilon,
    CorruptionEvaluation,
    MinNormEvaluation,
    LipschitzCertification,
    CertifiedExample,
    LipschitzSource,
    LipschitzBound,
    LayerBound,
    LowerBound,
    IoUProfile,
    SmoothingCertification,
    SoundnessResult,
    AttackCheck,
)

__all__ = [
    "AttackEvaluation",
    "CleanEvaluation",
    "MinNormEvaluation",
    "certify_lipschitz",
    "certify_smoothing",
    "check_soundness",
    "evaluate_attack",
    "evaluate_clean",
    "evaluate_min_norm",
    "evaluate_noise",
    "resolve_lipschitz",
]
