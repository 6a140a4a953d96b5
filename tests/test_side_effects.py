"""Importing the package changes nothing in the process (a notebook keeps its matplotlib
backend and warning filters); process settings a stage needs are restored after it."""

import subprocess
import sys

import pytest
import torch

from hpc_bliss.parallel.env import ProcessEnv, using_device
from tests.conftest import ROOT

#: our modules that do not import Lightning (which itself imports pyplot)
NO_LIGHTNING = """
import hpc_bliss.cli, hpc_bliss.config, hpc_bliss.plotting, hpc_bliss.evaluate.report
import hpc_bliss.io.reader, hpc_bliss.simulate.reference, hpc_bliss.stages.simulate
"""
EVERYTHING = (
    NO_LIGHTNING
    + """
import hpc_bliss.stages.evaluate, hpc_bliss.stages.pipeline, hpc_bliss.train.lit_module
import hpc_bliss.train.checkpoint, hpc_bliss.evaluate.scoring
"""
)
BACKEND_PROBE = (
    """
import sys, matplotlib
backend = dict.__getitem__(matplotlib.rcParams, "backend")
"""
    + NO_LIGHTNING
    + """
assert "matplotlib.pyplot" not in sys.modules, "pyplot imported"
assert dict.__getitem__(matplotlib.rcParams, "backend") == backend, "backend changed"
print("clean")
"""
)
STATE_PROBE = (
    """
import os, warnings
# third-party packages change warning filters and add fork hooks when imported: take the
# snapshot after them
import galsim, h5py, matplotlib, numpy, omegaconf, scipy.optimize, sep, submitit, torch
import lightning_fabric, pytorch_lightning
filters, threads, hooks = list(warnings.filters), torch.get_num_threads(), []
os.register_at_fork = lambda **kw: hooks.append(kw)  # record, do not install
"""
    + EVERYTHING
    + """
assert warnings.filters == filters, "warning filters changed"
assert torch.get_num_threads() == threads, "torch threads changed"
assert not hooks, f"fork hooks installed at import: {hooks}"
print("clean")
"""
)


@pytest.mark.parametrize("probe", [BACKEND_PROBE, STATE_PROBE], ids=["backend", "state"])
def test_importing_the_package_changes_no_process_state(probe):
    res = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0 and res.stdout.strip() == "clean", res.stderr[-2000:]


def test_a_stage_gives_back_the_threads_it_took():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with using_device(torch.device("cpu"), ProcessEnv(0, 1, 0, 1)):
            inside = torch.get_num_threads()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert inside >= 1
