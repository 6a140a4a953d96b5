"""Typed configuration: the schema (:mod:`.schema`, one dataclass per section), the rules
types cannot express (:mod:`.checks`), and loading YAML plus overrides (:mod:`.load`)."""

from hpc_bliss.config.load import DATA_GENERATE_KEYS, config_hash, load_config, to_yaml, validate
from hpc_bliss.config.schema import (
    PSF_KEYS,
    SDSS_BANDS,
    Config,
    EvaluateConfig,
    GenerateConfig,
    LaunchConfig,
    LensingConfig,
    LensingHeadConfig,
    ModelConfig,
    PowerLawFlux,
    PriorConfig,
    PsfConfig,
    RenderConfig,
    TrainConfig,
)

__all__ = [
    "DATA_GENERATE_KEYS",
    "PSF_KEYS",
    "SDSS_BANDS",
    "Config",
    "EvaluateConfig",
    "GenerateConfig",
    "LaunchConfig",
    "LensingConfig",
    "LensingHeadConfig",
    "ModelConfig",
    "PowerLawFlux",
    "PriorConfig",
    "PsfConfig",
    "RenderConfig",
    "TrainConfig",
    "config_hash",
    "load_config",
    "to_yaml",
    "validate",
]
