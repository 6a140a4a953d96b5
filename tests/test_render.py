import pytest
import torch

from hpc_bliss.catalog import FullCatalog
from hpc_bliss.config import RenderConfig, load_config
from hpc_bliss.errors import ConfigError
from hpc_bliss.seeding import make_generator
from hpc_bliss.simulate.batch import make_renderer, simulate_batch
from hpc_bliss.simulate.render import Renderer, fast_fft_size
from tests.conftest import CONFIGS

FLUX = [1.0, 2.0, 10.0, 4.0, 5.0]


def _stars(plocs, fluxes=None, h=48, w=48):
    plocs = torch.tensor(plocs, dtype=torch.float32)[None]
    n = plocs.shape[1]
    f = torch.tensor(fluxes or [FLUX] * n, dtype=torch.float32)[None]
    data = {
        "n_sources": torch.tensor([n]),
        "plocs": plocs,
        "star_fluxes": f,
        "source_type": torch.zeros(1, n, 1, dtype=torch.long),
    }
    return FullCatalog(h, w, data)


def test_fast_fft_size():
    assert fast_fft_size(128) == 128 and fast_fft_size(129) == 144 and fast_fft_size(61) == 64
    assert fast_fft_size(56) == 60


def test_star_flux_is_conserved_and_centred():
    r = Renderer(RenderConfig(), 48, 48)
    img = r.noiseless(_stars([[24.0, 24.0]]))[0]
    torch.testing.assert_close(img.sum(dim=(1, 2)), torch.tensor(FLUX), rtol=1e-4, atol=0)
    # a star at (24.0, 24.0) sits on the corner shared by pixels 23 and 24: symmetric image
    torch.testing.assert_close(img, img.flip(1).flip(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(img[2, 23:25, 23:25].min(), img[2].max())


def test_subpixel_shift_moves_the_light():
    r = Renderer(RenderConfig(), 48, 48)
    img = r.noiseless(_stars([[24.3, 20.8]]))[0, 2]
    rows = torch.arange(48) + 0.5
    centroid_r = (img.sum(1) * rows).sum() / img.sum()
    centroid_c = (img.sum(0) * rows).sum() / img.sum()
    assert abs(centroid_r.item() - 24.3) < 0.01 and abs(centroid_c.item() - 20.8) < 0.01


def test_sources_outside_are_not_drawn_and_edge_light_spills():
    r = Renderer(RenderConfig(), 48, 48)
    outside = r.noiseless(_stars([[-0.5, 10.0], [10.0, 48.2]]))
    assert outside.abs().max() < 1e-6
    edge = r.noiseless(_stars([[0.2, 24.0]]))[0, 2]
    # roughly half the light falls off the image; none wraps to the far side
    assert 0.3 * FLUX[2] < edge.sum() < 0.7 * FLUX[2]
    assert edge[-8:].abs().max() < 1e-4 * edge.max()


def test_noise_statistics_and_units():
    cfg = RenderConfig()
    r = Renderer(cfg, 48, 48)
    cat = FullCatalog(
        48, 48, {"n_sources": torch.zeros(64, dtype=torch.long), "plocs": torch.zeros(64, 1, 2)}
    )
    gen = torch.Generator().manual_seed(0)
    out = r.render(cat, gen)
    assert out.images.shape == (64, 5, 48, 48) and out.images.dtype == torch.float32
    sky = torch.tensor(cfg.sky)
    nelec = torch.tensor(cfg.nelec_per_nmgy)
    torch.testing.assert_close(out.background, sky[None].expand(64, -1))
    mean = out.images.mean(dim=(0, 2, 3))
    std = out.images.std(dim=(0, 2, 3))
    assert (mean.abs() < 0.01 * sky).all()  # sky-subtracted
    torch.testing.assert_close(std, (sky / nelec).sqrt(), rtol=0.02, atol=0)
    cfg_e = RenderConfig(units="electrons")
    e = Renderer(cfg_e, 48, 48).render(cat, torch.Generator().manual_seed(0))
    assert torch.equal(e.images, e.images.round())
    torch.testing.assert_close(e.images.mean(dim=(0, 2, 3)), sky * nelec, rtol=0.01, atol=0)


def test_noise_needs_a_generator_and_pad_is_checked():
    r = Renderer(RenderConfig(), 48, 48)
    with pytest.raises(ValueError, match="Generator"):
        r.render(_stars([[3.0, 3.0]]), None)
    with pytest.raises(ConfigError, match="render.pad"):
        Renderer(RenderConfig(pad=4), 48, 48)


@pytest.mark.parametrize("name", ["smoke", "galaxies", "m2"])
def test_simulate_batch_is_deterministic(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    renderer = make_renderer(cfg, "cpu")
    cat1, out1 = simulate_batch(cfg, 2, make_generator(cfg.seed, "t"), renderer)
    cat2, out2 = simulate_batch(cfg, 2, make_generator(cfg.seed, "t"), renderer)
    _, out3 = simulate_batch(cfg, 2, make_generator(cfg.seed + 1, "t"), renderer)
    assert torch.equal(out1.images, out2.images)
    assert not torch.equal(out1.images, out3.images)
    h, w = cfg.prior.image_height, cfg.prior.image_width
    assert out1.images.shape == (2, 5, h, w)
    assert out1.psf_params.shape == (2, 5, 6)
    assert torch.isfinite(out1.images).all()
