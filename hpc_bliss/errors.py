"""Typed errors: every failure a user can cause has a class and a message naming what was wrong."""


class HpcBlissError(Exception):
    """Base class of every error hpc-bliss raises on purpose."""


class ConfigError(HpcBlissError, ValueError):
    """A configuration file, key or value is invalid."""


class ShardError(HpcBlissError):
    """A shard file is missing, unreadable or does not follow the schema."""


class LaunchError(HpcBlissError):
    """A launch (MPI, SLURM, submitit, DDP) setting is inconsistent or failed."""
