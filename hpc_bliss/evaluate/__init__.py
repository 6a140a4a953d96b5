"""Evaluation of inferred catalogs: source matching and count-based metrics."""
