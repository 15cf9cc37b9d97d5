"""Certified robustness: Lipschitz bounds and their falsification, margins, smoothing."""
