import torch

from hpc_bliss.config import LensingConfig
from hpc_bliss.simulate.lensing import reduced_shear_and_magnification, sample_lensing_fields


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_disabled_fields_are_zero():
    shear, kappa = sample_lensing_fields(LensingConfig(enabled=False), 3, 8, 6, _gen())
    assert shear.shape == (3, 8, 6, 2) and kappa.shape == (3, 8, 6, 1)
    assert not shear.any() and not kappa.any()


def test_constant_per_image_when_no_power():
    cfg = LensingConfig(enabled=True, power_amplitude=0.0, constant_shear_std=0.03)
    shear, kappa = sample_lensing_fields(cfg, 64, 8, 8, _gen())
    flat = shear.flatten(1, 2)
    assert torch.allclose(flat, flat[:, :1].expand_as(flat))
    assert 0.02 < shear[:, 0, 0].std() < 0.04  # per-image constants have the configured spread


def test_random_field_variance_and_kaiser_squires_consistency():
    cfg = LensingConfig(
        enabled=True,
        power_amplitude=1e-4,
        power_index=2.0,
        constant_shear_std=0.0,
        constant_convergence_std=0.0,
    )
    shear, kappa = sample_lensing_fields(cfg, 200, 16, 16, _gen(1))
    assert abs(kappa.var().item() - 1e-4) < 1.5e-5
    # |γ̂1|² + |γ̂2|² = |κ̂|² mode by mode (k ≠ 0), so total shear power equals κ power
    k_hat = torch.fft.fft2(kappa[..., 0])
    g_hat = torch.fft.fft2(shear.permute(0, 3, 1, 2))
    torch.testing.assert_close((g_hat.abs() ** 2).sum(1), k_hat.abs() ** 2, rtol=1e-3, atol=1e-6)
    # smooth: neighbouring tiles are strongly correlated for a red spectrum
    corr = torch.corrcoef(torch.stack([kappa[:, :, :-1].flatten(), kappa[:, :, 1:].flatten()]))
    assert corr[0, 1] > 0.5


def test_clipping_and_determinism():
    cfg = LensingConfig(enabled=True, constant_shear_std=1.0, constant_convergence_std=1.0)
    shear, kappa = sample_lensing_fields(cfg, 50, 4, 4, _gen(2))
    assert shear.norm(dim=-1).max() <= cfg.max_abs + 1e-6 and kappa.abs().max() <= cfg.max_abs
    again, _ = sample_lensing_fields(cfg, 50, 4, 4, _gen(2))
    assert torch.equal(shear, again)


def test_reduced_shear_and_magnification():
    g, mu = reduced_shear_and_magnification(torch.tensor([[0.1, 0.0]]), torch.tensor([[0.2]]))
    torch.testing.assert_close(g, torch.tensor([[0.125, 0.0]]))
    torch.testing.assert_close(mu, torch.tensor([[1 / (0.64 - 0.01)]]))
