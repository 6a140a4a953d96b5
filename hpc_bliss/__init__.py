"""hpc-bliss: BLISS-style simulation-based inference for survey images, at HPC scale."""

__version__ = "0.1.0"
