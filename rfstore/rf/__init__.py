"""Receptive fields: theoretical (tracing the network) and empirical (from discrepancy maps or gradients)."""
