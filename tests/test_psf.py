import math

import pytest
import torch

from hpc_bliss.config import PsfConfig
from hpc_bliss.simulate.psf import component_fluxes, psf_fourier, psf_image, psf_params


def test_psf_image_is_normalised_and_centred():
    params = psf_params(PsfConfig())
    img = psf_image(params, 41, radius=15.0)
    assert img.shape == (5, 41, 41)
    torch.testing.assert_close(
        img.sum(dim=(1, 2)), torch.ones(5, dtype=torch.float64), atol=2e-5, rtol=0
    )
    peak = img.flatten(1).argmax(dim=1)
    assert (peak == 20 * 41 + 20).all()
    torch.testing.assert_close(img, img.flip(1))
    torch.testing.assert_close(img, img.transpose(1, 2))


def test_component_fluxes_sum_to_one_and_wings_matter():
    frac = component_fluxes(psf_params(PsfConfig()), 15.0)
    torch.testing.assert_close(frac.sum(-1), torch.ones(5, dtype=torch.float64))
    assert (frac[:, 2] > 0.05).all(), "the default wings should hold several percent of the flux"


def test_psf_fourier_has_unit_dc_and_is_real_symmetric():
    hat = psf_fourier(psf_params(PsfConfig()), 64, 64, 15.0)
    torch.testing.assert_close(
        hat[:, 0, 0].real, torch.ones(5, dtype=torch.float64), atol=2e-5, rtol=0
    )
    assert hat[:, 0, 0].imag.abs().max() < 1e-9
    # centred on pixel (0, 0): a symmetric profile has a real transform
    assert hat.imag.abs().max() < 1e-9


def test_psf_radius_larger_than_grid_is_refused():
    with pytest.raises(ValueError, match="radius"):
        psf_fourier(psf_params(PsfConfig()), 20, 20, 15.0)


@pytest.mark.galsim
def test_psf_image_matches_galsim():
    import galsim

    params = psf_params(PsfConfig())
    radius = 15.0
    ours = psf_image(params, 41, radius)
    frac = component_fluxes(params, radius)
    for b in range(5):
        s1, s2, _, sp, beta, _ = params[b].double().tolist()
        prof = galsim.Add(
            [
                galsim.Gaussian(sigma=s1, flux=frac[b, 0].item()),
                galsim.Gaussian(sigma=s2, flux=frac[b, 1].item()),
                galsim.Moffat(
                    beta=beta / 2,
                    scale_radius=math.sqrt(beta) * sp,
                    trunc=radius,
                    flux=frac[b, 2].item(),
                ),
            ]
        )
        ref = torch.from_numpy(prof.drawImage(nx=41, ny=41, scale=1.0, method="auto").array)
        diff = (ours[b] - ref.double()).abs().max() / ref.max()
        assert diff < 2e-3, f"band {b}: max |diff| = {diff:.2e} of peak"
