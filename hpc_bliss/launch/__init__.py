"""Launching stages as jobs: `submit.py` (submitit: SLURM, local processes or in-process)."""
