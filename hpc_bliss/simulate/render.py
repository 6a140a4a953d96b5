"""Batched rendering of catalogs into noisy multi-band images, the same code on CPU and CUDA.

The noise-free image is built in Fourier space on a grid padded by ``render.pad`` pixels:

* a star at (row, col) contributes flux · e^{-2πi(ky·row + kx·col)}; summed over stars this is
  a non-uniform DFT that factorises into two matrix products per band (rows × stars × cols),
  which BLAS/cuBLAS do fast and which place sources at exact sub-pixel positions;
* a galaxy (disk + bulge, each a Gaussian mixture from :mod:`profiles`, sheared to its axis
  ratio and angle, then lensed by its tile's reduced shear and magnification) has an analytic
  Fourier transform Σ w·exp(-2π² kᵀCk);
* the sum is multiplied by the DFT of the pixelised PSF (:mod:`psf`) and transformed back.

Sky is added, Poisson noise drawn in electrons, and the result returned in ``render.units``.
Sources outside the image are not drawn; light of sources inside spills over the edges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from hpc_bliss.catalog import FullCatalog, TileCatalog
from hpc_bliss.config import RenderConfig
from hpc_bliss.errors import ConfigError
from hpc_bliss.simulate.lensing import reduced_shear_and_magnification
from hpc_bliss.simulate.profiles import mixture
from hpc_bliss.simulate.psf import psf_fourier, psf_params


def fast_fft_size(n: int) -> int:
    """Smallest even m ≥ n whose prime factors are 2, 3 and 5."""
    m = n + n % 2
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 2


@dataclass
class RenderedBatch:
    """Images (N, B, H, W) in ``units``; ``background`` (N, B) is the sky per pixel in the same
    units (what was subtracted for "nmgy"); ``psf_params`` (N, B, 6) as in :mod:`psf`."""

    images: Tensor
    background: Tensor
    psf_params: Tensor
    units: str


class Renderer:
    """Renders catalogs of ``height``×``width`` images with the PSF, sky and gain of ``cfg``."""

    def __init__(
        self, cfg: RenderConfig, height: int, width: int, device: torch.device | str = "cpu"
    ) -> None:
        self.cfg = cfg
        self.height, self.width = height, width
        self.device = torch.device(device)
        self.pad = int(cfg.pad)
        if cfg.psf.radius >= 2 * self.pad:
            raise ConfigError(
                f"render.pad={cfg.pad} px is too small for render.psf.radius={cfg.psf.radius} px:"
                " light spreading beyond 2·pad from the image edge wraps around the FFT grid;"
                f" expected pad > {cfg.psf.radius / 2}"
            )
        self.grid_h = fast_fft_size(height + 2 * self.pad)
        self.grid_w = fast_fft_size(width + 2 * self.pad)
        self.psf_params = psf_params(cfg.psf, self.device)
        psf_hat = psf_fourier(self.psf_params.cpu(), self.grid_h, self.grid_w, cfg.psf.radius)
        self.psf_hat = psf_hat.to(device=self.device, dtype=torch.complex64)
        self.ky = torch.fft.fftfreq(self.grid_h, device=self.device)
        self.kx = torch.fft.rfftfreq(self.grid_w, device=self.device)
        self.sky = torch.tensor(list(cfg.sky), device=self.device)
        self.nelec = torch.tensor(list(cfg.nelec_per_nmgy), device=self.device)
        self.n_bands = self.psf_params.shape[0]
        exp_w, exp_v = mixture("exp", device=self.device)
        dev_w, dev_v = mixture("dev", device=self.device)
        self._mix = (exp_w, exp_v, dev_w, dev_v)

    # ---- noise-free scene ------------------------------------------------------------
    def _shifts(self, plocs: Tensor) -> Tensor:
        """Source positions in grid pixels: image pixel 0's centre sits on grid index ``pad``."""
        return plocs - 0.5 + self.pad

    def _star_scene(self, plocs: Tensor, fluxes: Tensor) -> Tensor:
        """Fourier transform (N, B, Hg, Wr) of point sources at ``plocs`` (N, S, 2) with
        ``fluxes`` (N, S, B) (zero for slots that are not drawn).

        e^{-iθy}e^{-iθx} is expanded in cosines and sines of the non-negative row and column
        frequencies, so one real matrix product per band, (2Ky × S)·(S × 2Kx), yields the
        transform at ±ky: half the arithmetic of a complex product over all rows.
        """
        shift = self._shifts(plocs)
        ky = torch.arange(self.grid_h // 2 + 1, device=self.device) / self.grid_h
        ang_y = torch.remainder(shift[..., 0, None] * ky, 1.0) * (2 * math.pi)
        ang_x = torch.remainder(shift[..., 1, None] * self.kx, 1.0) * (2 * math.pi)
        rows = torch.cat([torch.cos(ang_y), torch.sin(ang_y)], dim=-1).transpose(1, 2)
        cols = torch.cat([torch.cos(ang_x), torch.sin(ang_x)], dim=-1)
        n_ky, n_kx = ky.shape[0], self.kx.shape[0]
        n_neg = self.grid_h - n_ky  # rows of negative frequency, -n_neg/Hg .. -1/Hg
        out = torch.empty(
            (plocs.shape[0], self.n_bands, self.grid_h, n_kx),
            device=self.device,
            dtype=torch.complex64,
        )
        for b in range(self.n_bands):
            prod = rows @ (fluxes[..., b, None] * cols)  # (N, 2Ky, 2Kx)
            cc, cs = prod[:, :n_ky, :n_kx], prod[:, :n_ky, n_kx:]
            sc, ss = prod[:, n_ky:, :n_kx], prod[:, n_ky:, n_kx:]
            out[:, b, :n_ky] = torch.complex(cc - ss, -(cs + sc))
            neg = torch.complex(cc + ss, sc - cs)[:, 1 : n_neg + 1].flip(1)
            out[:, b, n_ky:] = neg
            if self.grid_h % 2 == 0:  # Nyquist row: the symmetric (real-part) choice
                out[:, b, n_ky - 1] = torch.complex(cc[:, -1], -cs[:, -1])
        return out

    def _galaxy_transforms(self, cat: FullCatalog, gal: Tensor) -> Tensor:
        """Fourier transforms (N, S, Hg, Wr) of unit-flux lensed galaxies (0 where not a galaxy)."""
        exp_w, exp_v, dev_w, dev_v = self._mix
        params = cat["galaxy_params"]
        disk_frac, beta, disk_q, a_d, bulge_q, a_b = params.unbind(-1)
        scale = self.cfg.pixel_scale
        shear = cat["shear"] if "shear" in cat else torch.zeros_like(params[..., :2])
        kappa = cat["convergence"] if "convergence" in cat else torch.zeros_like(params[..., :1])
        g, mu = reduced_shear_and_magnification(shear, kappa)
        lens = _shear_matrix(g) * mu.sqrt()[..., None]  # (N, S, 2, 2) in (x, y)
        kx2 = (self.kx**2)[None, :]
        ky2 = (self.ky**2)[:, None]
        kxy = self.ky[:, None] * self.kx[None, :]
        total = torch.zeros(
            (*gal.shape, self.grid_h, self.kx.shape[0]), device=self.device, dtype=torch.float32
        )
        for frac, q, a, w, v in (
            (disk_frac, disk_q, a_d, exp_w, exp_v),
            (1 - disk_frac, bulge_q, a_b, dev_w, dev_v),
        ):
            hlr2 = (a / scale) ** 2 * q  # circular half-light radius², pixels² (GalSim's hlr)
            safe_q = torch.where(gal, q, torch.ones_like(q))
            shape = _rotation(beta) @ torch.diag_embed(torch.stack([1 / safe_q, safe_q], -1))
            cov_unit = lens @ shape @ _rotation(beta).transpose(-1, -2) @ lens.transpose(-1, -2)
            cxx, cxy, cyy = cov_unit[..., 0, 0], cov_unit[..., 0, 1], cov_unit[..., 1, 1]
            quad = cxx[..., None, None] * kx2 + 2 * cxy[..., None, None] * kxy
            quad = (quad + cyy[..., None, None] * ky2) * hlr2[..., None, None]
            amp = (frac * gal)[..., None, None]
            for wj, vj in zip(w.tolist(), v.tolist(), strict=True):
                total += amp * wj * torch.exp(quad * (-2 * math.pi**2 * vj))
        return total * mu[..., None]

    def noiseless(self, catalog: TileCatalog | FullCatalog) -> Tensor:
        """The noise-free scene in nanomaggies per pixel (no sky): (N, B, H, W)."""
        cat = catalog.to_full_catalog() if isinstance(catalog, TileCatalog) else catalog
        cat = cat.to(self.device)
        plocs = cat["plocs"]
        inside = (plocs[..., 0] >= 0) & (plocs[..., 0] < self.height)
        inside &= (plocs[..., 1] >= 0) & (plocs[..., 1] < self.width)
        on = cat.is_on_mask & inside
        is_gal = on & (cat["source_type"][..., 0] == 1) if "source_type" in cat else on & False
        is_star = on & ~is_gal
        n = plocs.shape[0]
        if bool(is_star.any()):
            scene = self._star_scene(plocs, cat["star_fluxes"] * is_star[..., None])
        else:
            scene = torch.zeros(
                (n, self.n_bands, self.grid_h, self.kx.shape[0]),
                device=self.device,
                dtype=torch.complex64,
            )
        if bool(is_gal.any()):
            # galaxies are few: gather them into their own (N, G) slots to save work
            order = torch.argsort(is_gal.int(), dim=1, descending=True, stable=True)
            n_gal = int(is_gal.sum(1).max())
            idx = order[:, :n_gal]
            sub = FullCatalog(
                self.height,
                self.width,
                {k: _take(v, idx) for k, v in cat.data.items() if k != "n_sources"}
                | {"n_sources": is_gal.sum(1)},
            )
            gal = torch.gather(is_gal, 1, idx)
            transforms = self._galaxy_transforms(sub, gal)
            shift = self._shifts(sub["plocs"])
            ang_y = torch.remainder(shift[..., 0, None] * self.ky, 1.0) * (-2 * math.pi)
            ang_x = torch.remainder(shift[..., 1, None] * self.kx, 1.0) * (-2 * math.pi)
            row = torch.polar(torch.ones_like(ang_y), ang_y)
            col = torch.polar(torch.ones_like(ang_x), ang_x)
            profile = transforms * row[..., :, None] * col[..., None, :]  # (N, G, Hg, Wr)
            fluxes = (sub["galaxy_fluxes"] * gal[..., None]).to(torch.complex64)  # (N, G, B)
            flat = profile.reshape(n, n_gal, -1)
            scene += (fluxes.transpose(1, 2) @ flat).reshape(scene.shape)
        image = torch.fft.irfft2(scene * self.psf_hat, s=(self.grid_h, self.grid_w))
        return image[..., self.pad : self.pad + self.height, self.pad : self.pad + self.width]

    # ---- noise and units ---------------------------------------------------------------
    def render(
        self, catalog: TileCatalog | FullCatalog, generator: torch.Generator | None
    ) -> RenderedBatch:
        """Scene + sky, Poisson noise in electrons (if ``add_noise``), in ``render.units``.

        Renders ``render.chunk_size`` images at a time to bound memory.
        """
        chunk = int(self.cfg.chunk_size)
        parts = [
            self.noiseless(catalog.select(slice(i, i + chunk)))
            for i in range(0, catalog.batch_size, chunk)
        ]
        scene = torch.cat(parts) if len(parts) > 1 else parts[0]
        sky = self.sky[None, :, None, None]
        nelec = self.nelec[None, :, None, None]
        electrons = ((scene + sky) * nelec).clamp_min(0.0)
        if self.cfg.add_noise:
            if generator is None:
                raise ValueError("render.add_noise is true: pass a torch.Generator for the noise")
            electrons = torch.poisson(electrons, generator=generator)
        n = scene.shape[0]
        background = self.sky[None].expand(n, -1)
        units = self.cfg.units
        if units == "electrons":
            images, background = electrons, background * self.nelec
        elif units == "nmgy_sky":
            images = electrons / nelec
        else:
            images = electrons / nelec - sky
        psf = self.psf_params[None].expand(n, -1, -1)
        return RenderedBatch(images.float(), background.contiguous(), psf.contiguous(), units)


def _take(value: Tensor, idx: Tensor) -> Tensor:
    """Gather slots ``idx`` (N, G) along dim 1 of a (N, S, ...) tensor."""
    expanded = idx.reshape(*idx.shape, *([1] * (value.dim() - 2)))
    return value.gather(1, expanded.expand(-1, -1, *value.shape[2:]))


def _rotation(beta: Tensor) -> Tensor:
    c, s = torch.cos(beta), torch.sin(beta)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def _shear_matrix(g: Tensor) -> Tensor:
    """GalSim's area-preserving shear: [[1+g1, g2], [g2, 1-g1]] / sqrt(1-|g|²), in (x, y)."""
    g1, g2 = g[..., 0], g[..., 1]
    norm = torch.sqrt((1 - g1**2 - g2**2).clamp_min(1e-12))
    mat = torch.stack([torch.stack([1 + g1, g2], -1), torch.stack([g2, 1 - g1], -1)], -2)
    return mat / norm[..., None, None]
