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

``tiling``: ``"independent"`` (every tile inferred from the image alone, in one pass) or
``"checkerboard"`` (:mod:`hpc_bliss.model.checkerboard`: tiles of colour k inferred given the
sources reported for colours < k). With the checkerboard the trunk runs once; per colour, an
embedding of the history is added to the tile features (:meth:`Encoder.contextualise`) and the
two heads read the sum. The lensing head reads the trunk's features in either tiling.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from hpc_bliss.catalog import REF_BAND, TileCatalog
from hpc_bliss.model.aperture import anchored, aperture_log_flux
from hpc_bliss.model.checkerboard import (
    COLORS,
    CONTEXT_FEATURES,
    TILINGS,
    Canvas,
    color_offsets,
    context_embed,
    context_features,
    conv2d_at,
    mask_context,
    tile_colors,
)
from hpc_bliss.model.lensing import LensingDist, LensingHead
from hpc_bliss.model.variational import Point, VariationalDist

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


class Posterior(NamedTuple):
    """One point of q per tile (its mode or a draw) and the distributions it came from.

    ``n_sources`` (N, Ht, Wt); ``first``, ``second``: per-tile single-source tensors (keys of
    :meth:`VariationalDist.mode`, without ``n_sources``); ``q1``: the marginal head's q (count,
    first source); ``q2``: the conditional head's q of the second source given the first. With
    the checkerboard, each tile's values are those of its colour's pass.
    """

    n_sources: Tensor
    first: Point
    second: Point
    q1: VariationalDist
    q2: VariationalDist

    def catalog(self, tile_slen: int) -> TileCatalog:
        """The tile catalog (M = 2) of the point, inactive slots zeroed."""
        return _two_sources(tile_slen, self.n_sources, self.first, self.second)


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
        tiling: ``"independent"`` or ``"checkerboard"`` (spatially autoregressive).
        colors: colours of the checkerboard, 2 or 4 (unused by the independent tiling).
        aperture_flux: anchor the flux heads at each tile's aperture flux (see
            :func:`aperture_log_flux`): the heads predict log flux relative to it.
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
        tiling: str = "independent",
        colors: int = 4,
        aperture_flux: bool = False,
    ) -> None:
        super().__init__()
        if tile_slen < 1 or hidden < 2 or n_bands < 1 or border_tiles < 0:
            raise ValueError("need n_bands, tile_slen >= 1, hidden >= 2 and border_tiles >= 0")
        if tiling not in TILINGS or colors not in COLORS:
            raise ValueError(f"need tiling in {TILINGS} and colors in {COLORS}: {tiling}, {colors}")
        self.tiling, self.colors = tiling, int(colors)
        self.aperture_flux, self.hidden = bool(aperture_flux), hidden
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
        self.context_embed: nn.Sequential | None = None
        if tiling == "checkerboard":  # built after everything else, for the same reason
            self.context_embed = context_embed(hidden)

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
        features = self.tile_res(self.to_tiles(x))
        if not self.aperture_flux:
            return features
        return torch.cat([features, aperture_log_flux(images, self.tile_slen)], dim=1)

    def _split(self, features: Tensor) -> tuple[Tensor, Tensor | None]:
        """(the network's tile features, the aperture log fluxes (N, B, Ht, Wt) or None):
        with ``aperture_flux``, :meth:`forward` appends the latter as B channels."""
        if not self.aperture_flux:
            return features, None
        return features[:, : self.hidden], features[:, self.hidden :]

    @property
    def autoregressive(self) -> bool:
        """Whether tiles are inferred colour by colour (the checkerboard tiling)."""
        return self.context_embed is not None

    def tile_colors(self, features: Tensor) -> Tensor:
        """(Ht, Wt) int64 colour of each tile of ``features`` (all 0 for the independent
        tiling)."""
        ht, wt = features.shape[-2:]
        if not self.autoregressive:
            return torch.zeros(ht, wt, dtype=torch.long, device=features.device)
        return tile_colors(ht, wt, self.colors, features.device)

    def history(self, catalog: TileCatalog) -> Tensor:
        """(N, CONTEXT_FEATURES, Ht, Wt): every tile of ``catalog`` encoded as history
        (:func:`~hpc_bliss.model.checkerboard.context_features`, the reference band's fluxes)."""
        return context_features(catalog, self.ref_band)

    def contextualise(self, features: Tensor, history: Tensor | None, known: Tensor) -> Tensor:
        """Tile features given the sources on the tiles where the bool ``known`` (Ht, Wt) is
        true: ``features`` + the embedding of ``history`` (:meth:`history`) masked to the known
        tiles (checkerboard only). ``history`` None: nothing is known."""
        if self.context_embed is None:
            raise ValueError("this encoder has independent tiles: it takes no history")
        features, anchor = self._split(features)
        n, _, ht, wt = features.shape
        if history is None:
            ctx = features.new_zeros(n, CONTEXT_FEATURES, ht, wt)
        else:
            if history.shape[0] != n or history.shape[-2:] != features.shape[-2:]:
                raise ValueError(f"history {tuple(history.shape)} does not match {features.shape}")
            ctx = mask_context(history.to(features.dtype), known)
        out = features + self.context_embed(ctx)
        return out if anchor is None else torch.cat([out, anchor], dim=1)

    def marginal(self, features: Tensor) -> VariationalDist:
        """q(count, brightest source) per tile."""
        features, anchor = self._split(features)
        params = anchored(self.marginal_head(features), anchor, self.n_bands, True)
        return VariationalDist(params.permute(0, 2, 3, 1), self.n_bands, with_counts=True)

    def condition_features(self, condition: TileCatalog) -> Tensor:
        """(N, 5, Ht, Wt): slot 0's locs (centred), log r flux, galaxy flag, presence."""
        on = condition.is_on_mask[..., 0:1].float()
        locs = condition["locs"][..., 0, :].float() * 2 - 1
        flux = condition.fluxes[..., 0, self.ref_band : self.ref_band + 1].float()
        log_flux = torch.log(flux.clamp_min(1e-2)) / 5
        is_gal = condition.galaxy_bools[..., 0, :].float()
        x = torch.cat([locs, log_flux, is_gal, torch.ones_like(on)], dim=-1) * on
        return x.permute(0, 3, 1, 2)

    def conditional(
        self,
        features: Tensor,
        condition: TileCatalog,
        at: tuple[int, int] | None = None,
        base: Tensor | None = None,
    ) -> VariationalDist:
        """q(second source | first source = slot 0 of ``condition``) per tile (no count).

        ``at`` = (a, b): q on the tiles (a + 2i, b + 2j) only (features and condition still
        cover every tile: the head's 3×3 kernel reads the neighbours). ``base``: the features'
        part of the head's first convolution, :meth:`conditional_base` (computed here when not
        given; the loss computes it once for both orders of a tile's two sources)."""
        feats, anchor = self._split(features)
        cond = self.condition_features(condition).to(feats.dtype)
        if cond.shape[-2:] != feats.shape[-2:] or cond.shape[0] != feats.shape[0]:
            raise ValueError(f"condition tiles {cond.shape} do not match features {feats.shape}")
        first = self.cond_head[0]
        assert isinstance(first, nn.Conv2d)
        # the first conv of cat([features, embedding]) as the sum of its two parts
        embedded = conv2d_at(self.cond_embed(cond), first.weight[:, self.hidden :], None, at)
        if base is None:
            base = self.conditional_base(features, at)
        params = self.cond_head[1:](base + embedded)
        if at is not None and anchor is not None:
            anchor = anchor[..., at[0] :: 2, at[1] :: 2]
        params = anchored(params, anchor, self.n_bands, False)
        return VariationalDist(params.permute(0, 2, 3, 1), self.n_bands, with_counts=False)

    def conditional_base(self, features: Tensor, at: tuple[int, int] | None = None) -> Tensor:
        """The tile features' part (with the bias) of the conditional head's first convolution,
        which does not depend on the condition (on the tiles of ``at`` only, if given)."""
        first = self.cond_head[0]
        assert isinstance(first, nn.Conv2d)
        feats = self._split(features)[0]
        return conv2d_at(feats, first.weight[:, : self.hidden], first.bias, at)

    def lensing(self, features: Tensor, images: Tensor) -> LensingDist:
        """q(γ1, γ2, κ) per cell (N, Ht / c, Wt / c, 3), c = ``lensing_tiles_per_cell``, from the
        tile features of ``images`` (N, B, H, W) nmgy and the images themselves."""
        if self.lensing_head is None:
            raise ValueError("this encoder has no lensing head (lensing_tiles_per_cell = 0)")
        return self.lensing_head(self._split(features)[0], images)

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
        from the conditional head given the first. With the checkerboard, colour by colour,
        each given the sources already reported for earlier colours. Shapes:
        (N, Ht - 2b, Wt - 2b, ...).
        """
        return self.sample_features(self(images, background), use_mode, generator)

    @torch.no_grad()
    def sample_features(
        self, features: Tensor, use_mode: bool = True, generator: torch.Generator | None = None
    ) -> TileCatalog:
        """:meth:`sample` from tile features already computed (``self(images)``)."""
        cat = self.posterior(features, use_mode, generator).catalog(self.tile_slen)
        return cat.symmetric_crop(self.border_tiles) if self.border_tiles else cat

    def _one_pass(
        self, features: Tensor, use_mode: bool, generator: torch.Generator | None
    ) -> Posterior:
        """One pass of both heads over every tile (the independent tiling)."""
        q1 = self.marginal(features)
        first = _pick(q1, use_mode, generator)
        n = first.pop("n_sources")
        one = {k: v.unsqueeze(3) for k, v in first.items()}
        cond_cat = TileCatalog(self.tile_slen, {"n_sources": n.clamp(max=1), **one})
        q2 = self.conditional(features, cond_cat)
        return Posterior(n, first, _pick(q2, use_mode, generator), q1, q2)

    def _by_color(
        self, features: Tensor, use_mode: bool, generator: torch.Generator | None
    ) -> Posterior:
        """Colour by colour (checkerboard), each colour's heads on its subgrids only: the
        first sources, then the second ones given the first sources of the colour's tiles."""
        n, _, ht, wt = features.shape
        colors = self.tile_colors(features)
        canvas = Canvas(n, ht, wt)
        p = canvas.parts
        for k in range(self.colors):
            history = None
            if k:  # the points of the colours before k (later tiles still empty)
                sofar = _two_sources(self.tile_slen, p["tile"]["n_sources"], *canvas.points)
                history = self.history(sofar)
            h = self.contextualise(features, history, colors < k)
            offsets = color_offsets(self.colors, k)
            for a, b in offsets:
                q1 = self.marginal(h[..., a::2, b::2].contiguous())
                first = _pick(q1, use_mode, generator)
                canvas.put("tile", (a, b), {"n_sources": first.pop("n_sources"), "q1": q1.params})
                canvas.put("first", (a, b), first)
            cond_n = torch.where(colors == k, p["tile"]["n_sources"].clamp(max=1), 0)
            one = {key: v.unsqueeze(3) for key, v in p["first"].items()}
            cond_cat = TileCatalog(self.tile_slen, {"n_sources": cond_n, **one})
            for a, b in offsets:
                q2 = self.conditional(h, cond_cat, (a, b))
                canvas.put("tile", (a, b), {"q2": q2.params})
                canvas.put("second", (a, b), _pick(q2, use_mode, generator))
        q1 = VariationalDist(p["tile"]["q1"], self.n_bands, with_counts=True)
        q2 = VariationalDist(p["tile"]["q2"], self.n_bands, with_counts=False)
        return Posterior(p["tile"]["n_sources"], p["first"], p["second"], q1, q2)

    def posterior(
        self, features: Tensor, use_mode: bool = True, generator: torch.Generator | None = None
    ) -> Posterior:
        """The mode (or one draw, from ``generator``) of q per tile with its distributions, all
        tiles (no border cropped). Checkerboard: colour k's pass is given the points of the
        colours before it."""
        if not self.autoregressive:
            return self._one_pass(features, use_mode, generator)
        return self._by_color(features, use_mode, generator)


def _pick(q: VariationalDist, use_mode: bool, generator: torch.Generator | None) -> Point:
    """q's mode, or one draw from ``generator``."""
    return q.mode() if use_mode else q.sample(generator)


def _two_sources(tile_slen: int, n: Tensor, first: Point, second: Point) -> TileCatalog:
    """The tile catalog (M = 2) of per-tile first and second sources, inactive slots zeroed."""
    data: dict[str, Tensor] = {"n_sources": n}
    for k, v in first.items():
        data[k] = torch.stack([v, second[k]], dim=3)
    return TileCatalog(tile_slen, data).zero_inactive()
