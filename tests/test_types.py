"""The package type-checks: typed records (dataset items, manifest entries, report sections)
are only worth their annotations if mypy holds the code to them."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_mypy_finds_no_errors_in_the_package():
    res = subprocess.run(
        [sys.executable, "-m", "mypy", "hpc_bliss"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "Success: no issues found" in res.stdout
