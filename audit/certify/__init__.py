"""Lipschitz certificates: provable upper bounds from weights, and searches for lower bounds."""
