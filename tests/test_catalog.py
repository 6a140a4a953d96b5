"""Tests of hpc_bliss.catalog: validation, tile operations and tile <-> full conversions."""

import math

import pytest
import torch

from hpc_bliss.catalog import (
    TILE_KEYS,
    CatalogError,
    FullCatalog,
    TileCatalog,
    mag_to_nmgy,
    nmgy_to_mag,
)

SOURCE_KEYS = ("locs", "source_type", "star_fluxes", "galaxy_fluxes", "galaxy_params")


def make_tile_cat(seed, n, ht, wt, m, bands=5, tile_slen=4, p_empty=0.3):
    """Random tile catalog with zeroed inactive slots, built without the code under test."""
    g = torch.Generator().manual_seed(seed)
    n_sources = torch.randint(0, m + 1, (n, ht, wt), generator=g)
    n_sources[torch.rand(n, ht, wt, generator=g) < p_empty] = 0
    on = torch.arange(m) < n_sources[..., None]
    data = {
        "n_sources": n_sources,
        "locs": torch.rand(n, ht, wt, m, 2, generator=g),
        "source_type": torch.randint(0, 2, (n, ht, wt, m, 1), generator=g),
        "star_fluxes": torch.rand(n, ht, wt, m, bands, generator=g) * 100 + 0.1,
        "galaxy_fluxes": torch.rand(n, ht, wt, m, bands, generator=g) * 100 + 0.1,
        "galaxy_params": torch.rand(n, ht, wt, m, 6, generator=g),
    }
    for k in SOURCE_KEYS:
        data[k] = data[k] * on[..., None]
    data["shear"] = torch.randn(n, ht, wt, 2, generator=g)
    data["convergence"] = torch.randn(n, ht, wt, 1, generator=g)
    return TileCatalog(tile_slen, data)


def assert_inactive_zero(cat):
    off = ~cat.is_on_mask
    for k in cat.keys():
        if k != "n_sources" and k not in TILE_KEYS:
            assert (cat[k][off] == 0).all(), k


def assert_same_tiles(a, b, locs_atol=1e-5):
    assert torch.equal(a["n_sources"], b["n_sources"])
    for k in ("source_type", "star_fluxes", "galaxy_fluxes", "galaxy_params", *TILE_KEYS):
        assert torch.equal(a[k], b[k]), k
    assert torch.equal(a.fluxes, b.fluxes)
    assert torch.allclose(a["locs"], b["locs"], atol=locs_atol, rtol=0)
    assert (b["locs"] < 1).all() and (b["locs"] >= 0).all()


def hand_tile(fluxes_r, m=4, bands=3):
    """One 1x1-tile image whose sources have the given r-band (index 2) fluxes."""
    k = len(fluxes_r)
    fl = torch.zeros(1, 1, 1, m, bands)
    fl[0, 0, 0, :k, 2] = torch.tensor(fluxes_r)
    fl[0, 0, 0, :k, 0] = 1.0
    locs = torch.zeros(1, 1, 1, m, 2)
    locs[0, 0, 0, :k, 0] = torch.arange(1, k + 1) / 10  # identifies each source
    data = {
        "n_sources": torch.tensor([[[k]]]),
        "locs": locs,
        "star_fluxes": fl,
        "source_type": torch.zeros(1, 1, 1, m, 1, dtype=torch.int64),
        "shear": torch.tensor([[[[0.1, 0.2]]]]),
    }
    return TileCatalog(2, data)


# ---------------------------------------------------------------- validation


def test_validation_errors_name_key_and_shape():
    good = make_tile_cat(0, 2, 3, 4, 5).data
    with pytest.raises(CatalogError, match="'locs'"):
        TileCatalog(4, {"n_sources": good["n_sources"]})
    with pytest.raises(ValueError, match=r"'locs' has shape \(2, 3, 4, 5, 3\).*\(2, 3, 4, \?, 2\)"):
        TileCatalog(4, {**good, "locs": torch.zeros(2, 3, 4, 5, 3)})
    with pytest.raises(CatalogError, match=r"'galaxy_params' has shape \(2, 3, 4, 5, 5\)"):
        TileCatalog(4, {**good, "galaxy_params": torch.zeros(2, 3, 4, 5, 5)})
    with pytest.raises(CatalogError, match=r"'galaxy_fluxes'.*\(N, Ht, Wt, M, B\) = \(2, 3, 4, 5,"):
        TileCatalog(4, {**good, "galaxy_fluxes": torch.zeros(2, 3, 4, 5, 4)})
    with pytest.raises(CatalogError, match=r"'shear' has shape \(2, 3, 4, 5, 2\)"):
        TileCatalog(4, {**good, "shear": torch.zeros(2, 3, 4, 5, 2)})
    with pytest.raises(CatalogError, match="'n_sources' has dtype torch.float32"):
        TileCatalog(4, {**good, "n_sources": good["n_sources"].float()})
    with pytest.raises(CatalogError, match="'source_type' has dtype torch.int32"):
        TileCatalog(4, {**good, "source_type": good["source_type"].int()})
    with pytest.raises(CatalogError, match="'star_fluxes' has dtype torch.int64"):
        TileCatalog(4, {**good, "star_fluxes": good["star_fluxes"].long()})
    with pytest.raises(CatalogError, match="'extra' has shape"):
        TileCatalog(4, {**good, "extra": torch.zeros(2, 3, 4, 2)})
    with pytest.raises(CatalogError, match="'n_sources' has values outside"):
        TileCatalog(4, {**good, "n_sources": good["n_sources"] + 5})
    with pytest.raises(CatalogError, match="'plocs' has shape"):
        FullCatalog(
            8, 8, {"n_sources": torch.zeros(2, dtype=torch.int64), "plocs": torch.zeros(3, 4, 2)}
        )
    extra = TileCatalog(4, {**good, "extra": torch.ones(2, 3, 4, 5, 3)})
    assert extra["extra"].shape == (2, 3, 4, 5, 3) and "extra" in extra and "foo" not in extra
    assert extra.data is not good  # shallow copy


# ---------------------------------------------------------------- fluxes and magnitudes


def test_nmgy_mag_conversions():
    mags = nmgy_to_mag(torch.tensor([1.0, 100.0, 0.0, -3.0]))
    assert mags[:2].tolist() == pytest.approx([22.5, 17.5])
    assert math.isinf(mags[2]) and math.isinf(mags[3]) and mags[3] > 0
    assert mag_to_nmgy(torch.tensor([22.5, 17.5])).tolist() == pytest.approx([1.0, 100.0])
    assert mag_to_nmgy(torch.tensor(math.inf)).item() == 0.0


def test_properties_fluxes_and_magnitudes():
    cat = make_tile_cat(1, 2, 3, 4, 5)
    assert (cat.batch_size, cat.n_tiles_h, cat.n_tiles_w, cat.max_sources) == (2, 3, 4, 5)
    on = cat.is_on_mask
    assert on.shape == (2, 3, 4, 5) and torch.equal(on.sum(-1), cat["n_sources"])
    gal = cat["source_type"] == 1
    assert torch.equal(cat.galaxy_bools, on[..., None] & gal)
    assert torch.equal(cat.star_bools, on[..., None] & ~gal)
    expected = torch.where(gal, cat["galaxy_fluxes"], cat["star_fluxes"])
    assert torch.equal(cat.fluxes, expected)

    fl = torch.zeros(1, 1, 1, 3, 5)
    fl[0, 0, 0, 0, 2], fl[0, 0, 0, 1, 2] = 1.0, 100.0
    only_stars = TileCatalog(
        2,
        {"n_sources": torch.tensor([[[2]]]), "locs": torch.zeros(1, 1, 1, 3, 2), "star_fluxes": fl},
    )
    assert torch.equal(only_stars.fluxes, fl)
    mags = only_stars.magnitudes()
    assert mags.shape == (1, 1, 1, 3)
    assert mags[0, 0, 0, :2].tolist() == pytest.approx([22.5, 17.5])
    assert math.isinf(mags[0, 0, 0, 2])
    assert math.isinf(only_stars.magnitudes(band=0)[0, 0, 0, 0])  # zero flux in band 0


# ---------------------------------------------------------------- tile operations


def test_symmetric_crop_hand_made():
    n_sources = torch.arange(20).reshape(1, 4, 5) % 2
    locs = torch.zeros(1, 4, 5, 1, 2)
    locs[..., 0, 0] = torch.arange(20).reshape(1, 4, 5) / 100 * n_sources
    shear = torch.arange(40.0).reshape(1, 4, 5, 2)
    cat = TileCatalog(4, {"n_sources": n_sources, "locs": locs, "shear": shear})
    crop = cat.symmetric_crop(1)
    assert crop["n_sources"].shape == (1, 2, 3) and crop["locs"].shape == (1, 2, 3, 1, 2)
    assert crop["n_sources"].tolist() == [[[0, 1, 0], [1, 0, 1]]]
    assert crop["locs"][0, 0, :, 0, 0].tolist() == pytest.approx([0, 0.07, 0])
    assert crop["locs"][0, 1, :, 0, 0].tolist() == pytest.approx([0.11, 0, 0.13])
    assert crop["shear"][0, 0, 0].tolist() == [12.0, 13.0]
    assert torch.equal(cat.symmetric_crop(0)["locs"], locs)
    with pytest.raises(CatalogError, match="cannot crop 2"):
        cat.symmetric_crop(2)


def test_filter_by_flux_hand_made():
    cat = hand_tile([5.0, 0.5, 3.0])
    out = cat.filter_by_flux(1.0)
    assert out["n_sources"].item() == 2
    assert out.fluxes[0, 0, 0, :, 2].tolist() == [5.0, 3.0, 0.0, 0.0]
    assert out["locs"][0, 0, 0, :, 0].tolist() == pytest.approx([0.1, 0.3, 0.0, 0.0])
    assert out["shear"].tolist() == [[[[pytest.approx(0.1), pytest.approx(0.2)]]]]
    assert_inactive_zero(out)
    alias = cat.filter_tile_catalog_by_flux(4.0)
    assert alias["n_sources"].item() == 1 and alias.fluxes[0, 0, 0, 0, 2].item() == 5.0
    assert cat.filter_by_flux(1.0, band=0)["n_sources"].item() == 3


def test_brightest_sources_per_tile_hand_made():
    cat = hand_tile([2.0, 7.0, 7.0, 1.0])
    top = cat.get_brightest_sources_per_tile(top_k=2)
    assert top.max_sources == 2 and top["n_sources"].item() == 2
    assert top["locs"][0, 0, 0, :, 0].tolist() == pytest.approx([0.2, 0.3])  # ties: slot order
    second = cat.get_brightest_sources_per_tile(top_k=2, exclude_num=1)
    assert second["locs"][0, 0, 0, :, 0].tolist() == pytest.approx([0.3, 0.1])
    assert second.fluxes[0, 0, 0, :, 2].tolist() == [7.0, 2.0]
    assert torch.equal(second["shear"], cat["shear"])
    last = cat.get_brightest_sources_per_tile(top_k=3, exclude_num=3)
    assert last["n_sources"].item() == 1 and last.max_sources == 3
    assert last.fluxes[0, 0, 0, :, 2].tolist() == [1.0, 0.0, 0.0]
    none = hand_tile([4.0]).get_brightest_sources_per_tile(exclude_num=1)
    assert none["n_sources"].item() == 0 and (none["locs"] == 0).all()
    rnd = make_tile_cat(2, 2, 3, 4, 5)
    best = rnd.get_brightest_sources_per_tile()
    assert torch.equal(best["n_sources"], rnd["n_sources"].clamp(max=1))
    want = rnd.fluxes[..., 2].max(-1).values * (rnd["n_sources"] > 0)
    assert torch.equal(best.fluxes[..., 0, 2], want)


def test_inactive_slots_zero_after_each_op():
    cat = make_tile_cat(3, 3, 4, 5, 5)
    dirty = TileCatalog(4, {**cat.data, "locs": cat["locs"] + 0.5})
    assert (dirty["locs"][~dirty.is_on_mask] != 0).all()
    assert_inactive_zero(dirty.zero_inactive())
    for out in (
        cat.zero_inactive(),
        cat.filter_by_flux(30.0),
        cat.symmetric_crop(1),
        cat.get_brightest_sources_per_tile(top_k=2, exclude_num=1),
        cat.select([2, 0]),
        cat.to_full_catalog().to_tile_catalog(4, 2),
        cat.to("cpu"),
    ):
        assert_inactive_zero(out)
    full = cat.to_full_catalog()
    off = ~full.is_on_mask
    for k in full.keys():
        if k != "n_sources":
            assert (full[k][off] == 0).all(), k


def test_select():
    cat = make_tile_cat(4, 4, 2, 3, 2)
    for index, rows in (
        ([3, 1], [3, 1]),
        (slice(1, 3), [1, 2]),
        (torch.tensor([0]), [0]),
        (2, [2]),
        (torch.tensor([True, False, False, True]), [0, 3]),
    ):
        sub = cat.select(index)
        assert sub.batch_size == len(rows)
        for k in cat.keys():
            assert torch.equal(sub[k], cat[k][rows]), k
    full = cat.to_full_catalog()
    fsub = full.select([3, 1])
    assert torch.equal(fsub["plocs"], full["plocs"][[3, 1]])
    assert torch.equal(fsub.tile_fields["shear"], cat["shear"][[3, 1]])


# ---------------------------------------------------------------- tile <-> full


def test_plocs_formula_and_order_hand_made():
    n_sources = torch.zeros(1, 2, 3, dtype=torch.int64)
    n_sources[0, 1, 2], n_sources[0, 0, 1] = 2, 1
    locs = torch.zeros(1, 2, 3, 2, 2)
    locs[0, 1, 2, 0], locs[0, 1, 2, 1] = torch.tensor([0.25, 0.5]), torch.tensor([0.75, 0.0])
    locs[0, 0, 1, 0] = torch.tensor([0.5, 0.125])
    conv = torch.arange(6.0).reshape(1, 2, 3, 1)
    full = TileCatalog(4, {"n_sources": n_sources, "locs": locs, "convergence": conv})
    full = full.to_full_catalog()
    assert (full.height, full.width, full.max_sources) == (8, 12, 3)
    assert full["n_sources"].tolist() == [3]
    # tile (0, 1) comes first (row-major), then tile (1, 2) slots 0 and 1
    assert full["plocs"][0].tolist() == [[2.0, 4.5], [5.0, 10.0], [7.0, 8.0]]
    assert full["convergence"][0, :, 0].tolist() == [1.0, 5.0, 5.0]
    assert torch.equal(full.tile_fields["convergence"], conv)


@pytest.mark.parametrize(
    ("n", "ht", "wt", "m", "slen"),
    [(3, 4, 6, 5, 4), (2, 5, 3, 1, 5), (4, 2, 2, 5, 2), (1, 7, 1, 3, 3)],
)
def test_round_trip_is_exact(n, ht, wt, m, slen):
    cat = make_tile_cat(10 + n + m, n, ht, wt, m, tile_slen=slen)
    full = cat.to_full_catalog()
    assert full.max_sources == max(int(cat["n_sources"].sum((1, 2)).max()), 1)
    assert torch.equal(full["n_sources"], cat["n_sources"].sum((1, 2)))
    back = full.to_tile_catalog(slen, m)
    assert_same_tiles(cat, back)
    assert_inactive_zero(back)


def test_round_trip_float64():
    cat = make_tile_cat(9, 2, 3, 5, 3, tile_slen=5)
    data = {k: v.double() if v.is_floating_point() else v for k, v in cat.data.items()}
    cat = TileCatalog(5, data)
    back = cat.to_full_catalog().to_tile_catalog(5, 3)
    assert back["locs"].dtype == torch.float64
    assert_same_tiles(cat, back, locs_atol=1e-12)


def test_round_trip_edges_and_empty_images():
    cat = make_tile_cat(5, 3, 3, 4, 2, tile_slen=4)
    data = dict(cat.data)
    n_sources, locs = data["n_sources"].clone(), data["locs"].clone()
    n_sources[1] = 0  # an image with no sources at all
    n_sources[0, 2, 3] = 2  # far corner tile, locs just below 1
    locs[0, 2, 3] = torch.tensor([[0.9999999, 0.9999999], [0.99999994, 0.5]])
    n_sources[2, 1, 2] = 1  # interior tile where (i + loc) rounds to i + 1 in float32
    locs[2, 1, 2, 0] = torch.tensor([0.99999994, 0.9999999])
    n_sources[2, 0] = 0  # a row of empty tiles
    on = torch.arange(2) < n_sources[..., None]
    for k in SOURCE_KEYS:
        data[k] = data[k] * on[..., None]
    data["locs"] = locs * on[..., None]
    cat = TileCatalog(4, {**data, "n_sources": n_sources})
    full = cat.to_full_catalog()
    assert full["n_sources"][1].item() == 0 and (full["plocs"][1] == 0).all()
    assert (full["plocs"][..., 0] < 12).all() and (full["plocs"][..., 1] < 16).all()
    back = full.to_tile_catalog(4, 2)
    assert_same_tiles(cat, back)
    assert back["n_sources"][0, 2, 3].item() == 2 and back["n_sources"][2, 1, 2].item() == 1

    empty = make_tile_cat(6, 2, 3, 3, 4, p_empty=1.0)
    efull = empty.to_full_catalog()
    assert efull.max_sources == 1 and efull["n_sources"].tolist() == [0, 0]
    assert_same_tiles(empty, efull.to_tile_catalog(4, 4))
    nothing = FullCatalog(
        8, 8, {"n_sources": torch.zeros(2, dtype=torch.int64), "plocs": torch.zeros(2, 0, 2)}
    )
    assert nothing.to_tile_catalog(4, 3)["locs"].shape == (2, 2, 2, 3, 2)


def full_hand_made(with_flux=True):
    plocs = torch.tensor(
        [[[1.0, 1.0], [2.0, 2.0], [-0.5, 3.0], [3.0, 3.0], [8.0, 2.0], [5.0, 7.5], [2.0, 8.0]]]
    )
    data = {
        "n_sources": torch.tensor([6]),
        "plocs": plocs,
        "source_type": torch.tensor([[[0], [1], [0], [0], [0], [1], [0]]]),
    }
    if with_flux:
        r = torch.tensor([1.0, 5.0, 9.0, 3.0, 9.0, 2.0, 0.0])
        data["star_fluxes"] = torch.stack([r * 0, r * 0, r], -1)[None] * (data["source_type"] == 0)
        data["galaxy_fluxes"] = torch.stack([r, r, r], -1)[None] * (data["source_type"] == 1)
    return FullCatalog(8, 8, data)


def test_to_tile_catalog_drops_oob_and_keeps_brightest():
    # 8x8 image, tiles of 4: tile (0,0) gets fluxes 1, 5, 3; (-0.5, 3) and (8, 2) are outside;
    # (2, 8) is beyond n_sources.
    mags = full_hand_made().magnitudes()
    assert mags.shape == (1, 7) and mags[0, 1].item() == pytest.approx(22.5 - 2.5 * math.log10(5))
    assert math.isinf(mags[0, 6]) and torch.isfinite(mags[0, :6]).all()
    tiles = full_hand_made().to_tile_catalog(4, 2)
    assert tiles["n_sources"].tolist() == [[[2, 0], [0, 1]]]
    assert tiles["locs"][0, 0, 0].tolist() == [[0.5, 0.5], [0.75, 0.75]]  # fluxes 5 and 3
    assert tiles.fluxes[0, 0, 0, :, 2].tolist() == [5.0, 3.0]
    assert tiles["source_type"][0, 0, 0, :, 0].tolist() == [1, 0]
    assert tiles["locs"][0, 1, 1, 0].tolist() == [0.25, 0.875]
    assert_inactive_zero(tiles)
    roomy = full_hand_made().to_tile_catalog(2, 3)
    assert roomy["n_sources"].sum().item() == 4 and roomy["n_sources"][0, 0, 0].item() == 1
    no_flux = full_hand_made(with_flux=False).to_tile_catalog(4, 2)
    assert no_flux["locs"][0, 0, 0].tolist() == [[0.25, 0.25], [0.5, 0.5]]  # first two kept
    with pytest.raises(CatalogError, match="outside the 8x8 image"):
        full_hand_made().to_tile_catalog(4, 2, filter_oob=False)
    with pytest.raises(CatalogError, match="does not divide"):
        full_hand_made().to_tile_catalog(3, 2)


def test_tile_fields_need_matching_tile_slen():
    full = make_tile_cat(7, 2, 4, 4, 2, tile_slen=2).to_full_catalog()
    with pytest.raises(CatalogError, match="tile_slen 2, not 4"):
        full.to_tile_catalog(4, 4)
    bare = FullCatalog(full.height, full.width, full.data)
    coarse = bare.to_tile_catalog(4, 8)
    assert "shear" not in coarse and coarse["n_sources"].sum() == full["n_sources"].sum()


def test_large_batch_round_trip():
    cat = make_tile_cat(8, 16, 40, 40, 5, p_empty=0.0)  # ~4,000 sources per image
    full = cat.to_full_catalog()
    assert_same_tiles(cat, full.to_tile_catalog(4, 5), locs_atol=1e-5)
