"""The checkerboard (spatially autoregressive) tiling: colour layout, the factorised NLL,
colour-by-colour sampling, training, checkpoints and the config keys."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from hpc_bliss.catalog import TileCatalog
from hpc_bliss.config import config_hash, load_config
from hpc_bliss.errors import ConfigError
from hpc_bliss.model import Encoder, double_detection_nll
from hpc_bliss.model.checkerboard import context_features, only_on, tile_colors
from hpc_bliss.predict.crops import CropLayout
from hpc_bliss.predict.work import encode_rows, stitch
from hpc_bliss.seeding import make_generator
from hpc_bliss.simulate.batch import make_renderer, simulate_batch
from hpc_bliss.simulate.prior import sample_prior
from hpc_bliss.stages.train import model_arguments
from hpc_bliss.train.checkpoint import load_encoder
from hpc_bliss.train.lit_module import EncoderModule

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
B = 5


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def encoder(seed: int = 0, colors: int = 4, hidden: int = 8, **kw) -> Encoder:
    """A tiny checkerboard encoder whose history matters from the start (its context
    embedding's last layer, zero at construction, drawn at random; the heads' last layers,
    near zero at construction, larger)."""
    torch.manual_seed(seed)
    enc = Encoder(B, 2, hidden=hidden, n_blocks=1, tiling="checkerboard", colors=colors, **kw)
    assert enc.context_embed is not None
    nn.init.normal_(enc.context_embed[-1].weight, std=0.5)
    for head in (enc.marginal_head, enc.cond_head):
        nn.init.normal_(head[-1].weight, std=0.05)
    return enc


@pytest.fixture(scope="module")
def crowded() -> TileCatalog:
    """Two 21×19-tile catalogs (odd sizes: subgrids of unequal sizes) with many 1- and
    2-source tiles, stars and galaxies."""
    overrides = ["prior.image_height=42", "prior.image_width=38", "prior.mean_sources=1.0"]
    cfg = load_config(SMOKE, [*overrides, "prior.prob_galaxy=0.5"])
    return sample_prior(cfg.prior, 2, make_generator(4, "cb"), torch.device("cpu"))


@pytest.fixture(scope="module")
def smoke_batch():
    cfg = load_config(SMOKE)
    return simulate_batch(cfg, 4, make_generator(0, "t"), make_renderer(cfg, "cpu"))


def test_independent_tiling_is_the_encoder_of_before(crowded):
    torch.manual_seed(0)
    before = Encoder(B, 2, hidden=8, n_blocks=1)
    torch.manual_seed(0)
    now = Encoder(B, 2, hidden=8, n_blocks=1, tiling="independent", colors=2)
    mine, theirs = now.state_dict(), before.state_dict()
    assert list(mine) == list(theirs) and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert now.context_embed is None and not now.autoregressive
    images = torch.randn(2, B, 42, 38)
    loss = double_detection_nll(now, now(images), crowded).mean()
    assert torch.equal(loss, double_detection_nll(before, before(images), crowded).mean())
    a = now.sample(images, use_mode=False, generator=make_generator(1, "s"))
    b = before.sample(images, use_mode=False, generator=make_generator(1, "s"))
    assert all(torch.equal(a[k], b[k]) for k in a.keys())
    # an independent config adds no tiling hyperparameter: its checkpoints are those of before
    # (but for the flux anchor, model.aperture_flux, on by default)
    assert model_arguments(load_config(SMOKE, ["model.aperture_flux=false"])) == {}
    assert model_arguments(load_config(SMOKE)) == {"aperture_flux": True}
    cfg = load_config(SMOKE, ["model.tiling=checkerboard", "model.colors=2"])
    assert model_arguments(cfg) == {"tiling": "checkerboard", "colors": 2, "aperture_flux": True}


def test_colour_layout():
    four = tile_colors(4, 5, 4)
    assert four.tolist()[:2] == [[0, 1, 0, 1, 0], [2, 3, 2, 3, 2]]
    assert torch.equal(four[2:], four[:2])
    two = tile_colors(3, 4, 2)
    assert two.tolist() == [[0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]]
    padded = nn.functional.pad(four[None, None].float(), (1, 1, 1, 1), value=-1)[0, 0]
    for di in (-1, 0, 1):  # 4 colours: no tile has a neighbour (of 8) of its own colour
        for dj in (-1, 0, 1):
            if di or dj:
                shifted = padded[1 + di : 5 + di, 1 + dj : 6 + dj]
                assert not bool((shifted == four).any())
    # 2 colours: the 4 edge neighbours have the other colour
    assert bool((two[1:] != two[:-1]).all()) and bool((two[:, 1:] != two[:, :-1]).all())
    with pytest.raises(ValueError, match="colors"):
        tile_colors(4, 4, 3)
    with pytest.raises(ValueError, match="tiling"):
        Encoder(B, 2, tiling="bogus")


def _by_hand(enc: Encoder, features: torch.Tensor, target: TileCatalog) -> list[torch.Tensor]:
    """Each colour's per-tile term, from the encoder's parts: the truth masked to earlier
    colours, encoded, embedded and added to the features; the heads given own tiles only."""
    colors = tile_colors(*features.shape[-2:], enc.colors)
    z1 = target.get_brightest_sources_per_tile(2, 1, 0)
    z2 = target.get_brightest_sources_per_tile(2, 1, 1)
    n = target["n_sources"]
    assert enc.context_embed is not None
    terms = []
    for k in range(enc.colors):
        own, known = colors == k, colors < k
        ctx = context_features(target, enc.ref_band) * known
        assert bool((ctx[:, 0] == known).all())  # the known flag
        h = features + enc.context_embed(ctx)
        q = enc.marginal(h)
        counts = n.clamp(max=2)
        a = q.nll(z1, counts) + enc.conditional(h, only_on(z1, own)).nll(z2)
        b = q.nll(z2, counts) + enc.conditional(h, only_on(z2, own)).nll(z1)
        both = -torch.logaddexp(-a, -b)
        terms.append(torch.where(own, torch.where(n >= 2, both, a), 0.0))
    return terms


@pytest.mark.parametrize("colors", [2, 4])
@torch.no_grad()
def test_nll_is_the_sum_over_colours_of_the_conditional_terms(crowded, colors):
    enc = encoder(1, colors)
    features = enc(torch.randn(2, B, 42, 38))
    nll = double_detection_nll(enc, features, crowded)
    assert nll.shape == (2, 21, 19) and bool(torch.isfinite(nll).all())
    terms = _by_hand(enc, features, crowded)
    torch.testing.assert_close(nll, sum(terms))
    torch.testing.assert_close(nll.sum(), sum(t.sum() for t in terms))

    # new sources on colour-1 tiles: colour 0's terms keep their values, the later colours'
    # terms next to them change (their history changed)
    colors_map = tile_colors(21, 19, colors)
    moved = dict(crowded.data)
    one = (colors_map == 1)[None].expand(2, 21, 19)
    moved["n_sources"] = torch.where(one, 1, crowded["n_sources"])
    moved["locs"] = torch.where(one[..., None, None], 0.5, crowded["locs"])
    moved["star_fluxes"] = torch.where(one[..., None, None], 50.0, crowded["star_fluxes"])
    moved["source_type"] = torch.where(one[..., None, None], 0, crowded["source_type"])
    other = double_detection_nll(enc, features, TileCatalog(2, moved))
    zero, later = colors_map == 0, colors_map >= 2 if colors == 4 else colors_map == 1
    assert torch.equal(other[:, zero], nll[:, zero])
    if colors == 4:  # every colour-2 and colour-3 tile has colour-1 neighbours
        assert float((other[:, later] != nll[:, later]).float().mean()) > 0.95
    # min_flux drops sources from the history too: a filtered target scores the same
    manual = crowded.filter_by_flux(3.0)
    torch.testing.assert_close(
        double_detection_nll(enc, features, crowded, min_flux=3.0),
        double_detection_nll(enc, features, manual),
    )


@pytest.mark.parametrize("colors", [2, 4])
@torch.no_grad()
def test_each_colour_is_sampled_given_the_earlier_colours_only(colors):
    enc = encoder(2, colors)
    nn.init.normal_(enc.marginal_head[-1].weight[:3], std=1.0)  # counts vary over tiles
    images = torch.randn(2, B, 40, 40).abs() * 3
    mode = enc.sample(images)
    assert mode["n_sources"].shape == (2, 18, 18) and mode.max_sources == 2
    again = enc.sample(images)
    assert all(torch.equal(mode[k], again[k]) for k in mode.keys())
    assert bool((mode["n_sources"] == 2).any()) and bool((mode["n_sources"] == 0).any())
    draw = enc.sample(images, use_mode=False, generator=make_generator(1, "s"))
    redraw = enc.sample(images, use_mode=False, generator=make_generator(1, "s"))
    assert all(torch.equal(draw[k], redraw[k]) for k in draw.keys())
    assert not torch.equal(draw["locs"], mode["locs"])

    # colour k's values: one pass of the heads given the earlier colours' reported sources,
    # whatever the later colours' tiles hold (here: noise)
    features = enc(images)
    post = enc.posterior(features)
    reported = post.catalog(2)
    noise = TileCatalog(2, {k: v.clone() for k, v in reported.data.items()})
    noise["n_sources"].random_(0, 3, generator=make_generator(3, "n"))
    noise["locs"].uniform_(0, 1, generator=make_generator(3, "l"))
    colors_map = tile_colors(20, 20, colors)
    for k in range(colors):
        known = colors_map < k
        keep = known[None].expand(2, 20, 20)
        mixed = {
            key: torch.where(keep.view(*keep.shape, *[1] * (v.dim() - 3)), v, noise[key])
            for key, v in reported.data.items()
        }
        h = enc.contextualise(features, enc.history(TileCatalog(2, mixed)), known)
        q1 = enc.marginal(h).mode()
        own = colors_map == k
        assert torch.equal(q1["n_sources"][:, own], post.n_sources[:, own])
        for key in ("locs", "star_fluxes", "galaxy_params"):
            assert torch.equal(q1[key][:, own], post.first[key][:, own])
        torch.testing.assert_close(enc.marginal(h).params[:, own], post.q1.params[:, own])
        # the second sources: given the first sources of colour k's tiles only
        first = {key: v.unsqueeze(3) for key, v in post.first.items()}
        cond_n = torch.where(own, post.n_sources.clamp(max=1), 0)
        q2 = enc.conditional(h, TileCatalog(2, {"n_sources": cond_n, **first}))
        torch.testing.assert_close(q2.params[:, own], post.q2.params[:, own])
        if k:  # ... and they do depend on the earlier colours' sources
            h = enc.contextualise(features, enc.history(noise), known)
            assert not torch.equal(enc.marginal(h).params[:, own], post.q1.params[:, own])


def test_a_few_steps_lower_the_checkerboard_loss(smoke_batch):
    target, rendered = smoke_batch
    enc = encoder(6, hidden=16)
    opt = torch.optim.Adam(enc.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = double_detection_nll(enc, enc(rendered.images), target).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.85 * losses[0], (losses[0], losses[-1])


@pytest.mark.parametrize("tiling", ["independent", "checkerboard"])
def test_every_parameter_gets_a_gradient_with_or_without_lensing(smoke_batch, tiling):
    """Under DDP, a parameter left out of a step's graph is an error: none is, in either
    tiling, with the lensing head too."""
    target, rendered = smoke_batch
    batch = {"images": rendered.images, "tile_catalog": target.data}
    for cells in (0, 5):
        torch.manual_seed(0)
        module = EncoderModule(
            B, 2, hidden=8, n_blocks=1, lensing_tiles_per_cell=cells, tiling=tiling
        )
        losses = module._losses(batch)
        losses["loss"].backward()
        assert torch.isfinite(losses["loss"])
        missing = [name for name, p in module.named_parameters() if p.grad is None]
        assert not missing, missing
        assert (module.encoder.context_embed is not None) == (tiling == "checkerboard")


class _OneBatch(torch.utils.data.IterableDataset):
    def __init__(self, batch: dict) -> None:
        self.batch = batch

    def __iter__(self):
        yield self.batch


@pytest.mark.filterwarnings("ignore:You defined a `validation_step`")
@pytest.mark.filterwarnings("ignore:.*LeafSpec")  # Lightning-internal
def test_a_checkerboard_checkpoint_restores_the_checkerboard_encoder(smoke_batch, tmp_path):
    """One Lightning step, Lightning's checkpoint, then :func:`load_encoder` (weights_only)."""
    import pytorch_lightning as pl

    target, rendered = smoke_batch
    batch = {"images": rendered.images, "tile_catalog": target.data}
    module = EncoderModule(B, 2, hidden=8, n_blocks=1, tiling="checkerboard", colors=2)
    trainer = pl.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    loader = torch.utils.data.DataLoader(_OneBatch(batch), batch_size=None)
    trainer.fit(module, train_dataloaders=loader)
    path = tmp_path / "cb.ckpt"
    trainer.save_checkpoint(path)
    enc, hp = load_encoder(path, "cpu")  # torch.load(weights_only=True)
    assert hp["tiling"] == "checkerboard" and hp["colors"] == 2
    assert enc.tiling == "checkerboard" and enc.colors == 2 and enc.autoregressive
    mine, theirs = enc.state_dict(), module.encoder.state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    # a checkpoint of before the option (no tiling, no colors) loads as independent
    old = EncoderModule(B, 2, hidden=8, n_blocks=1)
    hp_old = {k: v for k, v in old.hparams.items() if k not in ("tiling", "colors")}
    torch.save({"hyper_parameters": hp_old, "state_dict": old.state_dict()}, path)
    enc, _ = load_encoder(path, "cpu")
    assert enc.tiling == "independent" and not enc.autoregressive


def test_predict_encodes_crops_with_the_checkerboard():
    enc = encoder(3).eval()
    image = torch.randn((5, 64, 80), generator=make_generator(5, "img")).abs()
    layout = CropLayout.make((64, 80), (32, 32), 2, 1)
    pieces = encode_rows(enc, image, layout, list(range(layout.shape[0])), 4, n_samples=1)
    for which in (0, 1):
        cat = stitch(layout, pieces, which)
        assert cat["n_sources"].shape == (1, 30, 38) and int(cat["n_sources"].max()) <= 2


@pytest.mark.parametrize(
    "override, names", [("model.tiling=bogus", "checkerboard"), ("model.colors=3", "[2, 4]")]
)
def test_a_bad_tiling_key_is_one_line_naming_it(override, names):
    with pytest.raises(ConfigError) as err:
        load_config(SMOKE, [override])
    msg = str(err.value)
    assert override.split("=")[0] in msg and names in msg and "\n" not in msg


def test_the_tiling_keys_do_not_change_the_data_hash():
    plain = load_config(SMOKE)
    cb = load_config(SMOKE, ["model.tiling=checkerboard", "model.colors=2"])
    assert (cb.model.tiling, cb.model.colors) == ("checkerboard", 2)
    assert config_hash(plain) == config_hash(cb)
