"""The encoder: images -> per-tile features -> variational distributions -> tile catalogs.

Images are sky-subtracted nanomaggies (N, B, H, W). They are normalised by ``asinh(x / scale)``
(linear within a few noise sigmas of the sky, logarithmic for bright stars), passed through a
few residual blocks at full resolution, reduced to one feature vector per tile by a convolution
of stride ``tile_slen``, then through residual blocks at tile resolution (context from
neighbouring tiles). Two heads read the tile features:

* the marginal head: q of the tile's count (0, 1, 2+) and of its brightest source;
* the conditional head: q of a second source given the first (its locs, log r flux, type and
  presence, embedded and concatenated with the features);
* optionally the lensing head (:mod:`hpc_bliss.model.lensing`): q of the shear and convergence
  per cell of ``lensing_tiles_per_cell`` × ``lensing_tiles_per_cell`` tiles.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from hpc_bliss.catalog import REF_BAND, TileCatalog
from hpc_bliss.model.lensing import LensingDist, LensingHead
from hpc_bliss.model.variational import VariationalDist

MAX_SOURCES = 2  #: sources per tile the encoder can report
_COND_FEATURES = 5  #: locs (2), log r flux, galaxy flag, presence


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)


class ResBlock(nn.Module):
    """Pre-activation residual block: x + conv(silu(gn(conv(silu(gn(x)))))), 3x3 convs."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            _norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        last = self.body[-1]
        assert isinstance(last, nn.Conv2d) and last.bias is not None
        nn.init.zeros_(last.weight)  # each block starts as the identity
        nn.init.zeros_(last.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def _head(in_ch: int, hidden: int, out_ch: int, kernel: int = 1) -> nn.Sequential:
    last = nn.Conv2d(hidden, out_ch, 1)
    nn.init.normal_(last.weight, std=1e-3)  # start near q with unit-ish scales everywhere
    assert last.bias is not None
    nn.init.zeros_(last.bias)
    return nn.Sequential(nn.Conv2d(in_ch, hidden, kernel, padding=kernel // 2), nn.SiLU(), last)


class Encoder(nn.Module):
    """Amortised posterior q(tile catalog | images) with up to 2 sources per tile.

    Args:
        n_bands: B, image bands.
        tile_slen: tile side, pixels; must divide the image height and width.
        hidden: feature channels at tile resolution (half of it at full resolution).
        n_blocks: residual blocks at tile resolution.
        border_tiles: tiles dropped on each side by :meth:`sample`.
        flux_scale: nmgy, the asinh softening (one value, or one per band).
        use_background: append ``asinh(background / flux_scale)`` as B constant channels.
        full_res_blocks: residual blocks at full resolution.
        ref_band: band whose log flux conditions the second source.
        lensing_tiles_per_cell: cell side, tiles, of the lensing head (0: no lensing head).
        lensing_hidden: channels of the lensing head.
    """

    def __init__(
        self,
        n_bands: int,
        tile_slen: int,
        hidden: int = 64,
        n_blocks: int = 4,
        border_tiles: int = 1,
        *,
        flux_scale: float | list[float] = 0.1,
        use_background: bool = False,
        full_res_blocks: int = 1,
        ref_band: int = REF_BAND,
        lensing_tiles_per_cell: int = 0,
        lensing_hidden: int = 32,
    ) -> None:
        super().__init__()
        if tile_slen < 1 or hidden < 2 or n_bands < 1 or border_tiles < 0:
            raise ValueError("need n_bands, tile_slen >= 1, hidden >= 2 and border_tiles >= 0")
        self.n_bands, self.tile_slen, self.border_tiles = n_bands, tile_slen, border_tiles
        self.use_background, self.ref_band = use_background, min(ref_band, n_bands - 1)
        scale = torch.as_tensor(flux_scale, dtype=torch.float32).expand(n_bands).clone()
        if bool((scale <= 0).any()):
            raise ValueError(f"flux_scale must be > 0, got {flux_scale}")
        self.flux_scale: Tensor
        self.register_buffer("flux_scale", scale.view(1, n_bands, 1, 1))
        full = max(hidden // 2, 2)
        in_ch = n_bands * (2 if use_background else 1)
        self.full_res = nn.Sequential(
            nn.Conv2d(in_ch, full, 3, padding=1), *[ResBlock(full) for _ in range(full_res_blocks)]
        )
        self.to_tiles = nn.Conv2d(full, hidden, tile_slen, stride=tile_slen)
        self.tile_res = nn.Sequential(
            *[ResBlock(hidden) for _ in range(n_blocks)], _norm(hidden), nn.SiLU()
        )
        self.marginal_head = _head(hidden, hidden, VariationalDist.n_params(n_bands, True))
        self.cond_embed = nn.Sequential(
            nn.Conv2d(_COND_FEATURES, hidden, 1), nn.SiLU(), nn.Conv2d(hidden, hidden, 1)
        )
        n_cond = VariationalDist.n_params(n_bands, False)
        self.cond_head = _head(2 * hidden, hidden, n_cond, kernel=3)
        self.lensing_head: LensingHead | None = None
        if lensing_tiles_per_cell > 0:  # built last: without it, the same parameters and init
            self.lensing_head = LensingHead(
                hidden, n_bands, lensing_tiles_per_cell, lensing_hidden, self.ref_band
            )

    def normalize(self, images: Tensor, background: Tensor | None = None) -> Tensor:
        """(N, B, H, W) nmgy -> network input (N, B or 2B, H, W)."""
        x = torch.asinh(images / self.flux_scale)
        if not self.use_background:
            return x
        if background is None:
            raise ValueError("this encoder was built with use_background=True: pass background")
        bg = background if background.dim() == 4 else background[..., None, None]
        bg = torch.asinh(bg.to(x.dtype) / self.flux_scale).expand_as(x)
        return torch.cat([x, bg], dim=1)

    def forward(self, images: Tensor, background: Tensor | None = None) -> Tensor:
        """Tile features (N, hidden, H / tile_slen, W / tile_slen) of images (N, B, H, W) nmgy."""
        if images.dim() != 4 or images.shape[1] != self.n_bands:
            raise ValueError(f"images must be (N, {self.n_bands}, H, W), got {images.shape}")
        h, w = images.shape[-2:]
        if h % self.tile_slen or w % self.tile_slen:
            raise ValueError(f"tile_slen {self.tile_slen} does not divide {h}x{w} images")
        x = self.full_res(self.normalize(images, background))
        return self.tile_res(self.to_tiles(x))

    def marginal(self, features: Tensor) -> VariationalDist:
        """q(count, brightest source) per tile."""
        params = self.marginal_head(features).permute(0, 2, 3, 1)
        return VariationalDist(params, self.n_bands, with_counts=True)

    def condition_features(self, condition: TileCatalog) -> Tensor:
        """(N, 5, Ht, Wt): slot 0's locs (centred), log r flux, galaxy flag, presence."""
        on = condition.is_on_mask[..., 0:1].float()
        locs = condition["locs"][..., 0, :].float() * 2 - 1
        flux = condition.fluxes[..., 0, self.ref_band : self.ref_band + 1].float()
        log_flux = torch.log(flux.clamp_min(1e-2)) / 5
        is_gal = condition.galaxy_bools[..., 0, :].float()
        x = torch.cat([locs, log_flux, is_gal, torch.ones_like(on)], dim=-1) * on
        return x.permute(0, 3, 1, 2)

    def conditional(self, features: Tensor, condition: TileCatalog) -> VariationalDist:
        """q(second source | first source = slot 0 of ``condition``) per tile (no count)."""
        cond = self.condition_features(condition).to(features.dtype)
        if cond.shape[-2:] != features.shape[-2:] or cond.shape[0] != features.shape[0]:
            raise ValueError(f"condition tiles {cond.shape} do not match features {features.shape}")
        x = torch.cat([features, self.cond_embed(cond)], dim=1)
        params = self.cond_head(x).permute(0, 2, 3, 1)
        return VariationalDist(params, self.n_bands, with_counts=False)

    def lensing(self, features: Tensor, images: Tensor) -> LensingDist:
        """q(γ1, γ2, κ) per cell (N, Ht / c, Wt / c, 3), c = ``lensing_tiles_per_cell``, from the
        tile features of ``images`` (N, B, H, W) nmgy and the images themselves."""
        if self.lensing_head is None:
            raise ValueError("this encoder has no lensing head (lensing_tiles_per_cell = 0)")
        return self.lensing_head(features, images)

    @torch.no_grad()
    def sample(
        self,
        images: Tensor,
        background: Tensor | None = None,
        use_mode: bool = True,
        generator: torch.Generator | None = None,
    ) -> TileCatalog:
        """Posterior mode (or one draw) as a TileCatalog with M = 2, border tiles cropped.

        The first source comes from the marginal head; where the count is 2, the second comes
        from the conditional head given the first. Shapes: (N, Ht - 2b, Wt - 2b, ...).
        """
        return self.sample_features(self(images, background), use_mode, generator)

    @torch.no_grad()
    def sample_features(
        self, features: Tensor, use_mode: bool = True, generator: torch.Generator | None = None
    ) -> TileCatalog:
        """:meth:`sample` from tile features already computed (``self(images)``)."""

        def point(q: VariationalDist) -> dict[str, Tensor]:
            return q.mode() if use_mode else q.sample(generator)

        first = point(self.marginal(features))
        n = first.pop("n_sources")
        one = {k: v.unsqueeze(3) for k, v in first.items()}
        cond_cat = TileCatalog(self.tile_slen, {"n_sources": n.clamp(max=1), **one})
        second = point(self.conditional(features, cond_cat))
        data: dict[str, Tensor] = {"n_sources": n}
        for k, v in first.items():
            data[k] = torch.stack([v, second[k]], dim=3)
        cat = TileCatalog(self.tile_slen, data).zero_inactive()
        return cat.symmetric_crop(self.border_tiles) if self.border_tiles else cat
