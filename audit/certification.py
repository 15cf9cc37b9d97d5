"""Certification evaluations: where L comes from, Lipschitz certificates, randomized smoothing.

As for attacks, what is kept is additive per-image state (certified counts per radius,
confusion matrices of the smoothed classifier), computed once per key by the engine and
reduced by the claims.  Worst-case IoU is the exception the reference warns about: per-image
worst cases do not add up to a dataset bound, so the per-image ingredients are kept and the
dataset-level bound is solved at reduction time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from audit import metrics
from audit.errors import ConfigError, EvaluationError, ModelError

if TYPE_CHECKING:
    from audit.claims.base import ClaimSpec, Measurement
    from audit.engine import Engine

#: radii every Lipschitz certification covers, so the report's curves come from the same pass
DEFAULT_RADII: tuple[float, ...] = tuple(round(0.02 * i, 2) for i in range(26))
#: relative safety factor against rounding (reference section 3)
KAPPA = 1e-3
#: the falsification search of a claimed constant: images it starts from, power-iteration
#: and gradient-ascent steps (each a forward and a backward pass on those images); enough to
#: expose a constant off by a factor, which is what it is for
FALSIFY_IMAGES = 2
FALSIFY_POWER_STEPS = 10
FALSIFY_ASCENT_STEPS = 15


class LipschitzFalsified(EvaluationError):
    """A claimed Lipschitz constant is contradicted by a pair of inputs."""

    def __init__(self, message: str, lower: Any) -> None:
        super().__init__(message)
        self.lower = lower


@dataclass(frozen=True)
class LipschitzSource:
    """The constant certificates use, and why it can be trusted."""

    value: float
    #: "computed" (a bound from the weights) or "claimed" (metadata or suite; tested)
    kind: str
    description: str
    bound: Any = None  # audit.certify.bounds.LipschitzBound
    lower: Any = None  # audit.certify.falsify.LowerBound

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "kind": self.kind,
            "description": self.description,
            "bound": self.bound.to_dict() if self.bound is not None else None,
            "lower_bound": self.lower.value if self.lower is not None else None,
        }


def computed_bound(engine: Engine) -> Any:
    """The provable bound of the audited function (wrapper included), computed once."""
    from audit.certify.bounds import lipschitz_bound

    return engine.cached(
        engine.key_parts("lipschitz_bound"), lambda: lipschitz_bound(engine.module)
    )


def lower_bound(engine: Engine) -> Any:
    """The falsification search's best lower bound of the true constant, computed once."""
    from audit.certify.falsify import lipschitz_lower_bound

    def compute() -> Any:
        from audit.certify.margins import full_float32

        images = next(iter(engine.batches())).images[:FALSIFY_IMAGES]
        generator = torch.Generator(device=engine.device).manual_seed(engine.seed)
        # The module itself, not a counted callable: the search evaluates a float64 copy when
        # it can, because at large resolutions float32 rounding in ||f(x) - f(y)|| is of the
        # order of the margin between a true constant and its bound.
        model = engine.module
        with full_float32():
            return lipschitz_lower_bound(
                model,
                images,
                generator=generator,
                power_steps=FALSIFY_POWER_STEPS,
                ascent_steps=FALSIFY_ASCENT_STEPS,
                tick=engine.check_deadline,
            )

    return engine.cached(engine.key_parts("lipschitz_lower_bound"), compute)


def claimed_constant(engine: Engine, source: Any) -> tuple[float, str]:
    if isinstance(source, float):
        return source, "stated in the claim"
    metadata = engine.model.metadata
    if metadata.lipschitz is None:
        raise ConfigError(
            "no claimed Lipschitz constant: the model's metadata has no 'lipschitz'; give one "
            "in the suite's [model] table, with --audit-metadata, or as lipschitz = <number>",
            key="lipschitz",
        )
    where = metadata.lipschitz_source or "the model's metadata"
    return float(metadata.lipschitz), f"claimed in {where}"


def resolve_lipschitz(engine: Engine, source: Any, *, falsify: bool = True) -> LipschitzSource:
    """L for certificates: ``computed``, ``claimed`` (or a number), or ``auto``.

    A claimed constant is a hypothesis: the falsification search must not find a pair of
    inputs whose output distance exceeds it, or every certificate built on it is refused.
    """
    from audit.certify.bounds import UnsupportedLayer

    if source in ("computed", "auto"):
        try:
            bound = computed_bound(engine)
            return LipschitzSource(
                bound.value, "computed", f"bound from the weights ({bound.method})", bound
            )
        except UnsupportedLayer as exc:
            if source == "computed":
                raise
            reason = str(exc)
        claimed, where = claimed_constant_or_reason(engine, reason)
    else:
        claimed, where = claimed_constant(engine, source)
    lower = lower_bound(engine)
    if falsify and lower.value > claimed * (1 + KAPPA):
        raise LipschitzFalsified(
            f"the claimed Lipschitz constant {claimed:g} ({where}) is false: two inputs "
            f"{float((lower.x - lower.y).norm()):.3g} apart (L2) give logits "
            f"{lower.value:.4g} times as far apart ({lower.method}); no certificate can use it",
            lower,
        )
    verdict = (
        "contradicted by a search"
        if lower.value > claimed * (1 + KAPPA)
        else "not contradicted by a search"
    )
    return LipschitzSource(
        claimed,
        "claimed",
        f"{where}; {verdict} (best lower bound {lower.value:.4g})",
        None,
        lower,
    )


def claimed_constant_or_reason(engine: Engine, reason: str) -> tuple[float, str]:
    try:
        return claimed_constant(engine, "claimed")
    except ConfigError:
        raise ModelError(
            f"no Lipschitz constant for certificates: {reason}; and the model claims none"
        ) from None


# -- the Lipschitz certifier ------------------------------------------------------------------
@dataclass(frozen=True)
class CertifiedExample:
    name: str
    image: np.ndarray  # H x W x 3 uint8
    radius: np.ndarray  # H x W float32, certified radius per pixel
    correct: np.ndarray  # H x W bool (labelled and predicted right)
    labelled: np.ndarray  # H x W bool


@dataclass(frozen=True)
class LipschitzCertification:
    lipschitz: LipschitzSource
    radii: tuple[float, ...]
    pixel_accuracy: torch.Tensor  # N x E x 2: certified correct, labelled (joint budget)
    fraction: torch.Tensor  # N x E x 2: pixels individually certified, all pixels
    iou_state: Any  # audit.certify.joint.IoUProfile: per-image worst-case IoU ingredients
    iou_radii: tuple[float, ...]
    clean_pixel_accuracy: float
    resolutions: tuple[tuple[int, int], ...]
    forward_passes: int
    seconds: float
    examples: tuple[CertifiedExample, ...] = field(default=())

    @property
    def num_samples(self) -> int:
        return int(self.pixel_accuracy.shape[0])

    @property
    def resolution(self) -> tuple[int, int] | None:
        """The common input size, or ``None`` when images differ in size."""
        sizes = set(self.resolutions)
        return next(iter(sizes)) if len(sizes) == 1 else None

    def index(self, eps: float) -> int:
        for i, r in enumerate(self.radii):
            if math.isclose(r, eps, rel_tol=0, abs_tol=1e-12):
                return i
        raise KeyError(eps)


def certify_lipschitz(
    engine: Engine, source: Any, radii: Sequence[float]
) -> LipschitzCertification:
    """One forward pass per batch: per-pixel radii and joint-budget metrics at every radius."""
    from audit.certify import joint, margins

    lipschitz = resolve_lipschitz(engine, source)
    grid = tuple(sorted({*DEFAULT_RADII, *(float(r) for r in radii)}))
    iou_radii = tuple(sorted({float(r) for r in radii}))

    def compute() -> LipschitzCertification:
        with margins.full_float32():
            return _certify_pass()

    def _certify_pass() -> LipschitzCertification:
        start_passes, start = engine.forward_passes, time.perf_counter()
        pa, frac, iou_parts, examples = [], [], [], []
        sizes: list[tuple[int, int]] = []
        correct_total = labelled_total = 0
        eps = torch.tensor(grid, dtype=torch.float64, device=engine.device)
        iou_eps = torch.tensor(iou_radii, dtype=torch.float64, device=engine.device)
        with torch.no_grad():
            for batch in engine.batches():
                logits = engine.forward(batch.images, batch.names)
                pa.append(
                    joint.certified_pixel_accuracy_counts(
                        logits,
                        batch.masks,
                        lipschitz.value,
                        eps,
                        ignore_index=engine.ignore_index,
                        kappa=KAPPA,
                    ).cpu()
                )
                radius = margins.certified_radius(logits, lipschitz.value, kappa=KAPPA)
                counts = joint.certified_fraction_counts(logits, lipschitz.value, eps, kappa=KAPPA)
                frac.append(counts[..., [0, 2]].cpu())
                # Worst-case IoU ingredients grow with the budget: only the claimed radii.
                iou_parts.append(
                    joint.iou_profile(
                        logits,
                        batch.masks,
                        lipschitz.value,
                        iou_eps,
                        ignore_index=engine.ignore_index,
                        kappa=KAPPA,
                    )
                )
                iou_parts[-1] = _to_cpu(iou_parts[-1])
                sizes.extend([tuple(batch.images.shape[-2:])] * len(batch.names))
                labelled = batch.masks != engine.ignore_index
                correct = (logits.argmax(1) == batch.masks) & labelled
                correct_total += int(correct.sum())
                labelled_total += int(labelled.sum())
                for j in range(len(batch.names)):
                    if len(examples) < engine.max_examples:
                        examples.append(
                            _certified_example(batch, j, radius[j], correct[j], labelled[j])
                        )
        if not pa:
            raise EvaluationError(f"dataset {engine.dataset.kind!r} has no samples to certify")
        if engine.device.type == "cuda":
            torch.cuda.synchronize(engine.device)
        return LipschitzCertification(
            lipschitz=lipschitz,
            radii=grid,
            pixel_accuracy=torch.cat(pa),
            fraction=torch.cat(frac),
            iou_state=joint.IoUProfile.cat(iou_parts),
            iou_radii=iou_radii,
            clean_pixel_accuracy=correct_total / labelled_total if labelled_total else math.nan,
            resolutions=tuple(sizes),
            forward_passes=engine.forward_passes - start_passes,
            seconds=time.perf_counter() - start,
            examples=tuple(examples),
        )

    parts = engine.key_parts(
        "certify_lipschitz",
        lipschitz=lipschitz.value,
        radii=list(grid),
        iou_radii=list(iou_radii),
        kappa=KAPPA,
    )
    result = engine.cached(parts, compute)
    engine.certifications[repr(("lipschitz", lipschitz.value))] = result
    return result


def _to_cpu(profile: Any) -> Any:
    """A batch's IoU profile moved off the device: it is kept for the whole dataset."""
    import dataclasses

    return dataclasses.replace(
        profile,
        **{f.name: getattr(profile, f.name).cpu() for f in dataclasses.fields(profile)},
    )


def _certified_example(
    batch: Any, j: int, radius: torch.Tensor, correct, labelled
) -> CertifiedExample:
    image = (batch.images[j].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0)
    return CertifiedExample(
        name=batch.names[j],
        image=image.cpu().numpy(),
        radius=radius.float().cpu().numpy(),
        correct=correct.cpu().numpy(),
        labelled=labelled.cpu().numpy(),
    )


# -- randomized smoothing ---------------------------------------------------------------------
@dataclass(frozen=True)
class SmoothingCertification:
    config: Mapping[str, Any]
    radius: float
    per_image: torch.Tensor  # N x (K+1) x (K+1) confusion, abstention as class K
    abstained: torch.Tensor  # N
    pixels: torch.Tensor  # N
    forward_passes: int
    seconds: float

    @property
    def num_samples(self) -> int:
        return int(self.per_image.shape[0])


def certify_smoothing(engine: Engine, config: Mapping[str, Any]) -> SmoothingCertification:
    from audit.certify.smoothing import SmoothingConfig, smoothing_certify

    cfg = SmoothingConfig(**config)

    def compute() -> SmoothingCertification:
        start_passes, start = engine.forward_passes, time.perf_counter()
        k = engine.num_classes
        cms, abstained, pixels = [], [], []
        model = engine.attack_forward(lambda grad: None)
        for b, batch in enumerate(engine.batches()):
            cfg.validate(int(batch.masks[0].numel()))
            from audit.adversarial import seed_for

            generator = torch.Generator(device=engine.device)
            generator.manual_seed(seed_for(engine.seed, "smoothing", sorted(config.items()), b))
            result = smoothing_certify(model, batch.images, cfg, generator=generator, num_classes=k)
            pred = torch.where(
                result.prediction < 0, torch.full_like(result.prediction, k), result.prediction
            )
            cms.append(
                metrics.per_image_confusion(pred, batch.masks, k + 1, engine.ignore_index).cpu()
            )
            abstained.append((result.prediction < 0).flatten(1).sum(1).cpu())
            pixels.append(torch.full((len(pred),), pred[0].numel()))
        if not cms:
            raise EvaluationError(f"dataset {engine.dataset.kind!r} has no samples to certify")
        return SmoothingCertification(
            config=dict(config),
            radius=cfg.radius,
            per_image=torch.cat(cms),
            abstained=torch.cat(abstained),
            pixels=torch.cat(pixels),
            forward_passes=engine.forward_passes - start_passes,
            seconds=time.perf_counter() - start,
        )

    result = engine.cached(engine.key_parts("certify_smoothing", **config), compute)
    engine.certifications[repr(("smoothing", sorted(config.items())))] = result
    return result


def smoothing_miou(cm: np.ndarray) -> Any:
    """mIoU over the real classes of a confusion matrix whose last class is "abstain":
    abstentions count as errors (false negatives of the true class)."""
    ious = metrics.class_iou(cm)[..., :-1]
    return metrics._nanmean(ious)


# -- claims -----------------------------------------------------------------------------------
def measure_certified(spec: ClaimSpec, engine: Engine) -> Measurement:
    from audit.claims.base import Measurement
    from audit.claims.certified import CLASS_PREFIX
    from audit.threat import ThreatModel, parse_epsilon

    p = spec.params
    threat = ThreatModel("l2", parse_epsilon(p["eps"]))
    eps = threat.eps.value
    metric = p["metric"]
    radii = [parse_epsilon(t).value for t in p["_sweep"]]
    # Before any pass, against the first image: smoothing's passes are expensive.
    engine.check_radius(threat)
    if p["certifier"] == "smoothing":
        return _measure_smoothing(spec, engine, eps, metric)
    cert = certify_lipschitz(engine, p["lipschitz"], radii)
    # The pass (shared by the whole sweep, so not refused inside it) knows every image's size.
    for height, width in sorted(set(cert.resolutions)):
        engine.check_radius(threat, (3, height, width))
    i = cert.index(eps)
    evidence: dict[str, Any] = {
        "certifier": "lipschitz",
        "lipschitz": cert.lipschitz.to_dict(),
        "radius": eps,
        "kappa": KAPPA,
    }
    if metric == "certified_pixel_accuracy":
        value, interval = engine.score_state(cert.pixel_accuracy[:, i], metrics.ratio_of_sums)
        quantity = "certified pixel accuracy"
    elif metric == "certified_fraction":
        value, interval = engine.score_state(cert.fraction[:, i], metrics.ratio_of_sums)
        quantity = "share of pixels certified"
    else:
        from audit.certify import joint

        if metric.startswith(CLASS_PREFIX):
            name = metric[len(CLASS_PREFIX) :]
            k = _class_index(spec, engine, name)
            j = cert.iou_radii.index(eps)
            value = float(joint.dataset_iou_lower_bound(cert.iou_state)[j, k])
            quantity = f"worst-case IoU of class {name!r}"
        else:
            j = cert.iou_radii.index(eps)
            value = float(joint.certified_miou_lower_bound(cert.iou_state)[j])
            quantity = "worst-case mIoU"
        interval = None
        evidence["aggregation"] = (
            "dataset-level worst case: one perturbation per image, each within the radius, "
            "chosen jointly to minimise the dataset IoU (Dinkelbach bisection)"
        )
    resolution = cert.resolution
    at = f" at {resolution[0]}x{resolution[1]}" if resolution else ""
    return Measurement(
        value=value,
        quantity=quantity,
        condition=f"at L2 radius {p['eps']}{at} (Lipschitz certificate, L = "
        f"{cert.lipschitz.value:.4g}, {cert.lipschitz.kind})",
        num_samples=cert.num_samples,
        interval=interval,
        evidence=evidence,
    )


def _class_index(spec: ClaimSpec, engine: Engine, name: str) -> int:
    if name not in engine.class_names:
        raise ConfigError(
            f"unknown class {name!r}; classes are {', '.join(engine.class_names)}",
            source=spec.source,
            claim=spec.id,
            key="metric",
        )
    return engine.class_names.index(name)


def _measure_smoothing(spec: ClaimSpec, engine: Engine, eps: float, metric: str) -> Measurement:
    from audit.claims.base import Measurement
    from audit.claims.certified import CLASS_PREFIX

    cert = certify_smoothing(engine, spec.params["smoothing"])
    k = engine.num_classes
    covered = eps <= cert.radius
    if metric == "certified_fraction":
        counts = torch.stack([cert.pixels - cert.abstained, cert.pixels], dim=1)
        if not covered:
            counts[:, 0] = 0
        value, interval = engine.score_state(counts, metrics.ratio_of_sums)
        quantity = "share of pixels certified"
    else:
        per_image = cert.per_image if covered else _nothing_certified(cert.per_image, k)
        if metric == "certified_pixel_accuracy":
            value, interval = engine.score_state(per_image, metrics.pixel_accuracy)
            quantity = "certified pixel accuracy"
        elif metric.startswith(CLASS_PREFIX):
            name = metric[len(CLASS_PREFIX) :]
            c = _class_index(spec, engine, name)
            value, interval = engine.score_state(
                per_image, lambda cm: metrics._scalar(metrics.class_iou(cm)[..., c])
            )
            quantity = f"certified IoU of class {name!r}"
        else:
            value, interval = engine.score_state(per_image, smoothing_miou)
            quantity = "certified mIoU"
    cfg = spec.params["smoothing"]
    return Measurement(
        value=value,
        quantity=quantity,
        condition=f"at L2 radius {spec.params['eps']} (randomized smoothing, sigma "
        f"{cfg['sigma']:g}, n {cfg['n']}, tau {cfg['tau']:g}, alpha {cfg['alpha']:g}, "
        f"{cfg['correction']}; certified radius {cert.radius:.4g}"
        + ("" if covered else ", below the claimed radius: nothing is certified")
        + ")",
        num_samples=cert.num_samples,
        interval=interval,
        evidence={
            "certifier": "smoothing",
            "config": dict(cfg),
            "certified_radius": cert.radius,
            "abstained": int(cert.abstained.sum()),
            "pixels": int(cert.pixels.sum()),
            "forward_passes": cert.forward_passes,
        },
    )


def _nothing_certified(per_image: torch.Tensor, k: int) -> torch.Tensor:
    """Every pixel moved to the abstain column: the certificate's radius is too small."""
    out = torch.zeros_like(per_image)
    out[:, :, k] = per_image.sum(2)
    return out


def measure_lipschitz(spec: ClaimSpec, engine: Engine) -> Measurement:
    from audit.certify.bounds import UnsupportedLayer
    from audit.claims.base import Measurement

    claimed = spec.threshold.max
    try:
        bound = computed_bound(engine)
    except UnsupportedLayer as exc:
        lower = lower_bound(engine)
        verdict = (
            f"which exceeds the claimed {claimed:g}: the claim is false"
            if claimed is not None and lower.value > claimed
            else "which does not contradict the claim, but proves nothing either"
        )
        raise EvaluationError(
            f"no upper bound can be computed, so the claim is not proven: {exc}. The "
            f"falsification search found a pair of inputs with ratio {lower.value:.4g} "
            f"({lower.method}), {verdict}"
        ) from None
    evidence: dict[str, Any] = {"bound": bound.to_dict()}
    artifacts: dict[str, Any] = {}
    if claimed is not None and bound.value > claimed:
        lower = lower_bound(engine)
        evidence["lower_bound"] = lower.value
        evidence["lower_bound_method"] = lower.method
        if lower.value > claimed:
            artifacts = {"x": lower.x.cpu().numpy(), "y": lower.y.cpu().numpy()}
    return Measurement(
        value=bound.value,
        quantity="upper bound of the L2 Lipschitz constant",
        condition=f"computed from the weights ({bound.method})",
        num_samples=0,
        evidence=evidence,
        artifacts=artifacts,
    )
