"""Encoder, variational distributions and losses (plain torch: no distributed imports here)."""

from hpc_bliss.model.encoder import MAX_SOURCES, Encoder
from hpc_bliss.model.lensing import LensingDist, LensingHead
from hpc_bliss.model.loss import double_detection_nll
from hpc_bliss.model.variational import VariationalDist

__all__ = [
    "MAX_SOURCES",
    "Encoder",
    "LensingDist",
    "LensingHead",
    "VariationalDist",
    "double_detection_nll",
]
