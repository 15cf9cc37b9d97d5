"""Evaluations: the model run over the audit's data, reduced to additive state and records.

One module per evaluation: ``clean`` (predictions on unperturbed images), ``attack``
(an attack at a threat model, and the noise baseline), ``min_norm`` (minimal-norm radii),
``lipschitz`` (where a certificate's constant comes from), ``certified`` (Lipschitz
certificates and randomized smoothing), ``soundness`` (attacks against certificates), and
``guard`` (proof that an evaluation left the model unchanged).  Each asks the engine to
compute it once per key and to log it; none words a verdict (that is the claims' job).
"""

from audit.evaluations.attack import AttackEvaluation, evaluate_attack, evaluate_noise
from audit.evaluations.certified import certify_lipschitz, certify_smoothing
from audit.evaluations.clean import CleanEvaluation, evaluate_clean
from audit.evaluations.lipschitz import resolve_lipschitz
from audit.evaluations.min_norm import MinNormEvaluation, evaluate_min_norm
from audit.evaluations.soundness import check_soundness

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
