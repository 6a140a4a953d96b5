"""Simulation: the prior over tile catalogs, lensing fields, the PSF and the renderer."""
