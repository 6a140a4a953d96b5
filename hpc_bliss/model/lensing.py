"""The weak-lensing head: q(γ1, γ2, κ | image) per cell of ``tiles_per_cell`` × ``tiles_per_cell``
detection tiles, one normal per component with a learned mean and scale.

Truth: a cell's γ1, γ2 and κ are the means of the per-tile fields over its tiles (the simulator
draws one value per tile, :mod:`hpc_bliss.simulate.lensing`), the shear γ itself, not the
reduced shear g = γ / (1 − κ) that galaxy shapes carry. Axes are GalSim's, as in the simulator:
x is the column axis, y the row axis (rows grow downwards in an image shown with row 0 on top);
γ1 > 0 stretches along x, γ2 > 0 along the diagonal x = y (towards growing row and column).

Architecture, two branches read at cell resolution:

* shapes: moment maps of the image (:mod:`hpc_bliss.model.moments`: χ, a spin-2 shape, about
  every pixel); a per-pixel MLP of the spin-0 values (weighted flux, size, |χ|²) gives each
  pixel a weight and a response; the weighted mean of response × χ over each cell and over the
  whole image are two spin-2 shape estimates (the field has a constant per image and varies
  slowly, so galaxies far from a cell inform it);
* context: the encoder's tile features through a per-tile MLP, averaged over the cell and over
  the image, with the log total weights of the shapes branch.

Two 3×3 convolutions of the context emit 6 numbers per cell: two spin-0 coefficients a_cell,
a_image, so that the mean shear is a_cell · (cell shape) + a_image · (image shape) (it turns
with the image as a spin-2 quantity must), κ's raw mean, and the three raw scales. Means of κ
are ``UNIT · raw``, scales ``UNIT · softplus(raw + softplus⁻¹(1)) + MIN_SCALE``: an untrained
head starts at mean 0, scale ``UNIT`` (a typical |γ|). Without the fixed moment filters the
head learned no shear in hundreds of steps even from noise-free isolated galaxies; with them it
learns a constant shear of such a field in ~100 steps (tests/test_lensing_head.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hpc_bliss.catalog import TileCatalog
from hpc_bliss.model.moments import MomentMaps

COMPONENTS = ("gamma1", "gamma2", "kappa")  #: the order of the last axis of cell tensors
UNIT = 0.05  #: the scale of the raw outputs (dimensionless, a typical |γ|)
MIN_SCALE = 1e-4  #: lower bound of every predicted standard deviation
_SOFTPLUS_INV_1 = math.log(math.e - 1)  #: softplus of this is 1
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def cell_means(field: Tensor, tiles_per_cell: int) -> Tensor:
    """(N, Ht, Wt, k) per-tile values -> (N, Ht / c, Wt / c, k) means over each cell's tiles."""
    n, ht, wt, k = field.shape
    c = tiles_per_cell
    if ht % c or wt % c:
        raise ValueError(f"tiles_per_cell {c} does not divide the {ht}x{wt} tile grid")
    return field.reshape(n, ht // c, c, wt // c, c, k).mean(dim=(2, 4))


def lensing_target(catalog: TileCatalog, tiles_per_cell: int) -> Tensor:
    """The true (γ1, γ2, κ) of every cell, (N, Hc, Wc, 3): cell means of the tile fields."""
    if "shear" not in catalog or "convergence" not in catalog:
        raise ValueError("the lensing head's truth needs the catalog's 'shear' and 'convergence'")
    fields = torch.cat([catalog["shear"], catalog["convergence"]], dim=-1).float()
    return cell_means(fields, tiles_per_cell)


class LensingDist:
    """Independent normals over (γ1, γ2, κ) per cell: ``mean`` and ``scale`` (N, Hc, Wc, 3)."""

    def __init__(self, mean: Tensor, scale: Tensor) -> None:
        if mean.shape != scale.shape or mean.dim() != 4 or mean.shape[-1] != len(COMPONENTS):
            raise ValueError(f"mean and scale must be (N, Hc, Wc, 3), got {tuple(mean.shape)}")
        self.mean, self.scale = mean, scale

    def nll(self, target: Tensor) -> Tensor:
        """-log q of ``target`` (N, Hc, Wc, 3), summed over the components: (N, Hc, Wc)."""
        if target.shape != self.mean.shape:
            raise ValueError(f"target {tuple(target.shape)} != cells {tuple(self.mean.shape)}")
        z = (target.float() - self.mean) / self.scale
        return (0.5 * z**2 + torch.log(self.scale) + _HALF_LOG_2PI).sum(-1)

    def to(self, device: torch.device | str) -> LensingDist:
        return LensingDist(self.mean.to(device), self.scale.to(device))


class LensingHead(nn.Module):
    """Tile features (N, in_ch, Ht, Wt) and images (N, B, H, W) -> :class:`LensingDist` on the
    cell grid (see the module's docstring)."""

    def __init__(
        self, in_ch: int, n_bands: int, tiles_per_cell: int, hidden: int = 32, ref_band: int = 0
    ) -> None:
        super().__init__()
        if tiles_per_cell < 1 or hidden < 2:
            raise ValueError("need tiles_per_cell >= 1 and hidden >= 2")
        self.tiles_per_cell = tiles_per_cell
        self.moments = MomentMaps(n_bands, ref_band)
        self.pixel = nn.Sequential(nn.Conv2d(3, 16, 1), nn.SiLU(), nn.Conv2d(16, 2, 1))
        self.per_tile = nn.Sequential(
            nn.Conv2d(in_ch, hidden, 1), nn.SiLU(), nn.Conv2d(hidden, hidden, 1), nn.SiLU()
        )
        last = nn.Conv2d(hidden, 6, 1)
        nn.init.normal_(last.weight, std=1e-3)  # start at mean 0, scale UNIT
        assert last.bias is not None
        nn.init.zeros_(last.bias)
        self.cells = nn.Sequential(
            nn.Conv2d(2 * hidden + 2, hidden, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.SiLU(),
            last,
        )

    def _shapes(self, images: Tensor, cell_px: int) -> tuple[Tensor, Tensor]:
        """Weighted mean spin-2 shape per cell and per image, (N, 2, 2, Hc, Wc) (cell, image),
        and the log total weights (N, 2, Hc, Wc)."""
        maps = self.moments(images)
        chi = maps[:, 2:4]
        spin0 = torch.cat([maps[:, :2], (chi**2).sum(1, keepdim=True)], dim=1)
        log_w, response = self.pixel(spin0).unbind(1)
        w = torch.exp(log_w.clamp(-20.0, 20.0))[:, None]
        we = w * chi * response[:, None]
        sums = [F.avg_pool2d(torch.cat([w, we], 1), cell_px)]
        sums.append(torch.cat([w, we], 1).mean(dim=(-2, -1), keepdim=True).expand_as(sums[0]))
        shapes = torch.stack([s[:, 1:] / (s[:, :1] + 1e-6) for s in sums], dim=1)
        log_w = torch.cat([torch.log(s[:, :1] + 1e-6) for s in sums], dim=1)
        return shapes, log_w

    def forward(self, features: Tensor, images: Tensor) -> LensingDist:
        c = self.tiles_per_cell
        if features.shape[-2] % c or features.shape[-1] % c:
            raise ValueError(f"tiles_per_cell {c} does not divide {tuple(features.shape[-2:])}")
        shapes, log_w = self._shapes(images, c * images.shape[-1] // features.shape[-1])
        x = self.per_tile(features)
        cells = F.avg_pool2d(x, c)
        context = x.mean(dim=(-2, -1), keepdim=True).expand_as(cells)
        raw = self.cells(torch.cat([cells, context, log_w], dim=1)).float()
        shear = (raw[:, 0:2, None] * shapes).sum(1)  # spin-0 coefficients × spin-2 shapes
        mean = torch.cat([shear, UNIT * raw[:, 2:3]], dim=1).permute(0, 2, 3, 1)
        scale = UNIT * F.softplus(raw[:, 3:6] + _SOFTPLUS_INV_1) + MIN_SCALE
        return LensingDist(mean, scale.permute(0, 2, 3, 1))
