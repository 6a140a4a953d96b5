"""CUDA checks: run by scripts/gpu_check.sh on a GPU machine; skipped where there is no GPU."""

import pytest
import torch

from hpc_bliss.config import load_config
from hpc_bliss.seeding import make_generator
from hpc_bliss.simulate.batch import make_renderer, simulate_batch
from hpc_bliss.simulate.prior import sample_prior
from tests.conftest import CONFIGS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("name", ["m2", "galaxies"])
def test_cuda_render_equals_cpu_render(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    cat = sample_prior(cfg.prior, 8, make_generator(0, "gpu"))
    cpu = make_renderer(cfg, "cpu").noiseless(cat)
    gpu = make_renderer(cfg, "cuda").noiseless(cat.to("cuda")).cpu()
    scale = cpu.abs().amax(dim=(2, 3), keepdim=True)
    assert ((gpu - cpu).abs() / scale).max() < 1e-4


@pytest.mark.parametrize("name", ["m2", "galaxies"])
def test_cuda_simulation_is_deterministic_and_sane(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    renderer = make_renderer(cfg, "cuda")
    cat1, out1 = simulate_batch(cfg, 16, make_generator(1, "gpu", device="cuda"), renderer)
    cat2, out2 = simulate_batch(cfg, 16, make_generator(1, "gpu", device="cuda"), renderer)
    assert torch.equal(out1.images, out2.images)
    assert out1.images.is_cuda and torch.isfinite(out1.images).all()
    mean = cat1["n_sources"].float().mean().item()
    assert abs(mean - cfg.prior.mean_sources) < 0.1 * cfg.prior.mean_sources + 0.02


def test_cuda_training_runs_and_checkpoints(tmp_path):
    from hpc_bliss.stages.generate import generate
    from hpc_bliss.stages.train import train

    data = tmp_path / "data"
    cfg = load_config(CONFIGS / "smoke.yaml", [f"generate.output_dir={data}"])
    assert generate(cfg, log=lambda s: None) == 0
    result = train(
        load_config(
            CONFIGS / "smoke.yaml",
            [
                f"train.data_dir={data}",
                f"train.output_dir={tmp_path / 'train'}",
                "train.accelerator=gpu",
                "train.devices=1",
                "train.max_epochs=2",
                "train.num_workers=0",
            ],
        )
    )
    assert result["global_step"] == 4
    ckpt = torch.load(result["last"], weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == 4
