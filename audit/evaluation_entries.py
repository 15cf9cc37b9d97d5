"""Certificate and minimal-norm evaluations as ``results.json`` entries and evidence files.

The session calls these when it finishes; the report reads only what they write.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from audit.results import finite_or_none


def certification_entry(cert: Any, report_dir: Path, engine: Any) -> dict[str, Any]:
    import hashlib

    from audit import metrics
    from audit.certification import KAPPA, LipschitzCertification, smoothing_miou

    if isinstance(cert, LipschitzCertification):
        digest = hashlib.sha256(repr((cert.lipschitz.value, cert.radii)).encode()).hexdigest()
        entry_id = f"lipschitz-{digest[:6]}"
        pa = cert.pixel_accuracy.sum(0)
        frac = cert.fraction.sum(0)
        return {
            "id": entry_id,
            "certifier": "lipschitz",
            "lipschitz": cert.lipschitz.to_dict(),
            "radii": list(cert.radii),
            "certified_pixel_accuracy": [
                finite_or_none(float(metrics.ratio_of_sums(row))) for row in pa
            ],
            "certified_fraction": [
                finite_or_none(float(metrics.ratio_of_sums(row))) for row in frac
            ],
            "clean_pixel_accuracy": finite_or_none(cert.clean_pixel_accuracy),
            "resolution": list(cert.resolution) if cert.resolution else None,
            "num_samples": cert.num_samples,
            "forward_passes": cert.forward_passes,
            "seconds": round(cert.seconds, 4),
            "kappa": KAPPA,
            "examples": _write_radius_maps(report_dir, entry_id, cert.examples),
        }
    digest = hashlib.sha256(repr(sorted(cert.config.items())).encode()).hexdigest()
    cm = cert.per_image.sum(0).numpy()
    return {
        "id": f"smoothing-{digest[:6]}",
        "certifier": "smoothing",
        "config": dict(cert.config),
        "radius": cert.radius,
        "certified_pixel_accuracy": finite_or_none(float(metrics.pixel_accuracy(cm))),
        "certified_miou": finite_or_none(float(smoothing_miou(cm))),
        "abstain_rate": finite_or_none(float(cert.abstained.sum() / cert.pixels.sum())),
        "num_samples": cert.num_samples,
        "forward_passes": cert.forward_passes,
        "seconds": round(cert.seconds, 4),
    }


#: viridis at five stops, for radius heat maps (the report draws the same colour bar)
_VIRIDIS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))


def _write_radius_maps(report_dir: Path, entry_id: str, examples: Any) -> list[dict[str, Any]]:
    import numpy as np
    from PIL import Image

    folder = report_dir / "certificates" / entry_id
    folder.mkdir(parents=True, exist_ok=True)
    stops = np.asarray(_VIRIDIS, dtype=np.float64)
    out = []
    for i, ex in enumerate(examples):
        radius = np.nan_to_num(ex.radius.astype(np.float64), nan=0.0, posinf=0.0)
        top = float(np.quantile(radius, 0.99)) or 1e-12
        scaled = np.clip(radius / top, 0, 1) * (len(stops) - 1)
        low = np.floor(scaled).astype(int).clip(0, len(stops) - 2)
        frac = (scaled - low)[..., None]
        rgb = (stops[low] * (1 - frac) + stops[low + 1] * frac).round().astype(np.uint8)
        Image.fromarray(ex.image).save(folder / f"{i}-image.png", optimize=True)
        Image.fromarray(rgb).save(folder / f"{i}-radius.png", optimize=True)
        out.append(
            {
                "name": ex.name,
                "image": f"certificates/{entry_id}/{i}-image.png",
                "radius_map": f"certificates/{entry_id}/{i}-radius.png",
                "radius_max_shown": top,
                "median_radius": float(np.median(radius)),
                "certified_share_at": {
                    str(r): float((radius > r).mean()) for r in (0.05, 0.1, 0.17)
                },
            }
        )
    return out


def min_norm_entry(ev: Any) -> dict[str, Any]:
    import numpy as np

    def summary(values: Any) -> dict[str, Any]:
        array = values.numpy()
        finite = np.isfinite(array)
        quantiles = {
            str(q): finite_or_none(float(np.quantile(array, q, method="inverted_cdf")))
            if array.size
            else None
            for q in (0.1, 0.25, 0.5, 0.75, 0.9)
        }
        return {
            "median": quantiles["0.5"],
            "quantiles": quantiles,
            "finite_fraction": float(finite.mean()) if array.size else None,
            "count": int(array.size),
        }

    image = summary(ev.image_radius)
    image["values"] = [finite_or_none(float(v)) for v in ev.image_radius.tolist()]
    return {
        "id": ev.id,
        "attack": ev.attack,
        "params": ev.params,
        "norm": ev.norm,
        "num_samples": ev.num_samples,
        "image_radius": image,
        "pixel_radius": summary(ev.pixel_radius),
        "reached": int(ev.reached.sum()),
        "forward_passes": ev.forward_passes,
        "backward_passes": ev.backward_passes,
        "seconds": round(ev.seconds, 4),
    }
