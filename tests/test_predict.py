"""`predict` on the committed cut of the real field: crops and stitching, the catalog file,
resume, two ranks against one, and the inputs it refuses."""

import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from hpc_bliss.config import load_config
from hpc_bliss.errors import ConfigError
from hpc_bliss.io.manifest import read_manifest
from hpc_bliss.model import Encoder
from hpc_bliss.predict.catalog_io import COLUMNS, read_catalog
from hpc_bliss.predict.checks import PROVENANCE_KEY
from hpc_bliss.predict.crops import CropLayout
from hpc_bliss.predict.posterior import posterior_mode
from hpc_bliss.predict.work import encode_rows, stitch
from hpc_bliss.stages.generate import generate
from hpc_bliss.stages.predict import predict
from hpc_bliss.stages.train import train
from hpc_bliss.survey.files import SurveyError
from tests.conftest import CONFIGS, ROOT
from tests.mpi_utils import MPI_ENV, mpirun

CUT = ROOT / "tests" / "data" / "sdss-cut" / "2583" / "2" / "136"


@pytest.mark.parametrize(
    "frame, crop, border", [(128, 32, 1), (97, 32, 1), (64, 64, 2), (300, 112, 1), (40, 16, 0)]
)
def test_every_reported_tile_is_owned_by_one_crop(frame, crop, border):
    layout = CropLayout.make((frame, frame + 6), (crop, crop), 2, border)
    count = np.zeros(layout.stitched_tiles, int)
    n_int = crop // 2 - 2 * border
    for i in range(layout.shape[0]):
        for j in range(layout.shape[1]):
            (in_r, in_c), (st_r, st_c) = layout.owned(i, j)
            assert 0 <= in_r.start < in_r.stop <= n_int and 0 <= in_c.start < in_c.stop <= n_int
            count[st_r, st_c] += 1
            rows, cols = layout.pixels(i, j)
            assert rows.stop <= frame and cols.stop <= frame + 6
    assert (count == 1).all()


def test_a_frame_smaller_than_a_crop_is_refused():
    with pytest.raises(ConfigError, match="smaller than one crop"):
        CropLayout.make((30, 200), (32, 32), 2, 1)


def _local_encoder() -> Encoder:
    """A real encoder made local, with random weights: no residual blocks and no whole-image
    normalisation, and a 1×1 first convolution, so a tile's output depends on its own pixels
    and (through the conditional head's 3×3 kernel) its neighbour tiles' only: within the one
    border tile a crop leaves, encoding in crops must give what one pass over the image gives.
    (The trained encoder sees further and normalises over the crop: its output differs.)"""
    torch.manual_seed(0)
    enc = Encoder(5, 2, hidden=8, n_blocks=0, border_tiles=1, full_res_blocks=0)
    enc.tile_res = nn.Identity()
    enc.full_res = nn.Conv2d(5, 4, 1)
    for p in enc.parameters():
        nn.init.normal_(p, std=0.3)
    return enc.eval()


def test_stitching_several_crops_equals_one_pass():
    enc = _local_encoder()
    gen = torch.Generator().manual_seed(1)
    image = torch.randn((5, 96, 150), generator=gen) * 0.3 + (torch.rand(5, 96, 150) > 0.97) * 5
    layout = CropLayout.make((96, 150), (32, 32), 2, 1)
    assert layout.shape == (4, 6)
    pieces = encode_rows(enc, image, layout, list(range(layout.shape[0])), batch_size=4)
    stitched = stitch(layout, pieces)
    one = posterior_mode(enc, image[None, :, :96, :150])
    assert stitched["n_sources"].shape == one["n_sources"].shape == (1, 46, 73)
    assert torch.equal(stitched["n_sources"], one["n_sources"])
    assert int(one["n_sources"].sum()) > 50
    for key in ("locs", "star_fluxes", "exist_prob", "galaxy_prob", "flux_err"):
        torch.testing.assert_close(stitched[key], one[key], rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small encoder trained in the test on images like the cut's (sdss_m2.yaml at 32 px)."""
    root = tmp_path_factory.mktemp("predict")
    overrides = [
        f"survey.field={CUT}",
        "prior.image_height=32",
        "prior.image_width=32",
        f"generate.output_dir={root / 'data'}",
        "generate.n_shards=4",
        "generate.images_per_shard=8",
        "generate.batch_size=8",
        "generate.split=[0.5,0.25,0.25]",
        f"train.output_dir={root / 'train'}",
        "train.max_epochs=1",
        "train.hidden=8",
        "train.n_blocks=1",
        "train.num_workers=0",
        "train.batch_size=8",
        f"predict.fields=[{CUT}]",
        "predict.batch_size=3",
    ]
    cfg = load_config(CONFIGS / "sdss_m2.yaml", overrides)
    assert generate(cfg, log=lambda s: None) == 0
    result = train(cfg)
    overrides.append(f"predict.checkpoint={result['best']}")
    return root, overrides


def _config(trained, *extra):
    root, overrides = trained
    return load_config(CONFIGS / "sdss_m2.yaml", [*overrides, *extra])


def test_predict_writes_a_catalog_of_the_field(trained):
    root, _ = trained
    out = root / "one"
    lines: list[str] = []
    assert (
        predict(
            _config(trained, f"predict.output_dir={out}", "predict.n_samples=2"), log=lines.append
        )
        == 0
    )
    path = out / "2583-2-136" / "catalog.h5"
    cols, attrs = read_catalog(path)
    n = attrs["n_sources"]
    assert n == len(cols["ra"]) > 0
    with h5py.File(path) as f:  # any HDF5 tool reads it: plain datasets with units
        assert set(COLUMNS) <= set(f) and f["ra"].attrs["units"] == "deg"
        assert f["flux"].shape == (n, 5) and f["mask_flags"].shape == (n, 5)
        assert len(f["samples"]) == 2
    assert attrs["crops"] == [5, 5] and attrs["reported_pixels"] == [2, 126, 2, 126]
    assert ((cols["row"] >= 2) & (cols["row"] < 126) & (cols["col"] >= 2)).all()
    assert ((cols["exist_prob"] > 0) & (cols["exist_prob"] <= 1)).all()
    np.testing.assert_allclose(
        cols["mag"][:, 2], 22.5 - 2.5 * np.log10(cols["flux"][:, 2]), rtol=1e-5
    )
    # sky positions from the WCS: the cut's (0.5, 0.5) is the frame's (190.5, 1450.5)
    assert 323.2 < cols["ra"].min() and cols["dec"].max() < -0.6
    assert len(attrs["residual_rms"]) == 5 and all(v > 0 for v in attrs["residual_rms"])
    for png in ("overlay.png", "residual.png"):
        assert (out / "2583-2-136" / png).stat().st_size > 10_000
    assert any("2583-2-136:" in line and "sources" in line for line in lines)


def test_rerun_skips_done_fields(trained):
    root, _ = trained
    cfg = _config(trained, f"predict.output_dir={root / 'resume'}")
    predict(cfg, log=lambda s: None)
    path = root / "resume" / "2583-2-136" / "catalog.h5"
    stamp = path.stat().st_mtime_ns
    lines: list[str] = []
    predict(cfg, log=lines.append)
    assert path.stat().st_mtime_ns == stamp
    assert any("2583-2-136: done" in line and "skipped" in line for line in lines)
    with pytest.raises(ConfigError, match="made with"):  # other settings: refused, not mixed
        predict(
            _config(trained, f"predict.output_dir={root / 'resume'}", "predict.n_samples=1"),
            log=lambda s: None,
        )


@pytest.mark.mpi
def test_two_ranks_give_the_catalog_of_one(trained):
    root, overrides = trained
    one, two = root / "r1", root / "r2"
    predict(_config(trained, f"predict.output_dir={one}"), log=lambda s: None)
    code = (
        "import sys; from hpc_bliss.config import load_config; "
        "from hpc_bliss.stages.predict import predict; "
        "sys.exit(predict(load_config(sys.argv[1], sys.argv[2:])))"
    )
    cmd = [
        *mpirun(2),
        sys.executable,
        "-c",
        code,
        str(CONFIGS / "sdss_m2.yaml"),
        *overrides,
        f"predict.output_dir={two}",
    ]
    res = subprocess.run(cmd, cwd=ROOT, env=MPI_ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "rank 1/2" in res.stdout  # progress of each rank
    a, _ = read_catalog(one / "2583-2-136" / "catalog.h5")
    b, attrs = read_catalog(two / "2583-2-136" / "catalog.h5")
    for key in COLUMNS:
        assert np.array_equal(a[key], b[key]), key


def _field_copy(tmp_path):
    field_dir = tmp_path / "2583" / "2" / "136"
    shutil.copytree(CUT, field_dir)
    shutil.copy(CUT.parent / "photoField-002583-2.fits", field_dir.parent)
    return field_dir


def test_bad_fields_are_named(trained, tmp_path):
    field_dir = _field_copy(tmp_path)
    (field_dir / "frame-z-002583-2-0136.fits.bz2").unlink()
    frame = field_dir / "frame-u-002583-2-0136.fits.bz2"
    with pytest.raises(SurveyError, match="frame-z-002583-2-0136.fits.bz2: no such file"):
        predict(
            _config(
                trained, f"predict.fields=[{field_dir}]", f"predict.output_dir={tmp_path / 'out'}"
            ),
            log=lambda s: None,
        )
    shutil.copy(CUT / "frame-z-002583-2-0136.fits.bz2", field_dir)
    frame.write_bytes(frame.read_bytes()[:3000])
    with pytest.raises(SurveyError, match=f"{frame}: cannot read it as FITS"):
        predict(
            _config(
                trained, f"predict.fields=[{field_dir}]", f"predict.output_dir={tmp_path / 'out'}"
            ),
            log=lambda s: None,
        )


def test_a_frame_of_another_band_is_named(trained, tmp_path):
    """A frame file that holds another band than its name says (here g under the name of r)."""
    field_dir = _field_copy(tmp_path)
    shutil.copy(
        CUT / "frame-g-002583-2-0136.fits.bz2", field_dir / "frame-r-002583-2-0136.fits.bz2"
    )
    with pytest.raises(SurveyError, match="FILTER = 'g', expected band 'r'"):
        predict(
            _config(
                trained, f"predict.fields=[{field_dir}]", f"predict.output_dir={tmp_path / 'out'}"
            ),
            log=lambda s: None,
        )


def test_bands_that_do_not_match_the_model_are_refused(trained, tmp_path):
    cfg = _config(
        trained,
        "prior.bands=[g,r,i]",
        "prior.star_color_mean=[0.5,0,0]",
        "prior.star_color_std=[0.1,0,0.1]",
        "prior.galaxy_color_mean=[0.5,0,0]",
        "prior.galaxy_color_std=[0.1,0,0.1]",
        "prior.reference_band=1",
        f"predict.output_dir={tmp_path}",
    )
    with pytest.raises(ConfigError, match="trained on 5 bands .* the config has 3 bands"):
        predict(cfg, log=lambda s: None)


def test_a_checkpoint_for_another_survey_is_refused_unless_forced(trained, tmp_path):
    """Training records its data's config in the checkpoint (PROVENANCE_KEY): predict accepts
    it for the config it was trained on, and refuses it for a survey config with another pixel
    scale and sky (as another survey's field would have) unless predict.force=true."""
    root, overrides = trained
    ckpt_path = [o for o in overrides if o.startswith("predict.checkpoint=")][0].split("=", 1)[1]
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert ckpt[PROVENANCE_KEY]["config_yaml"] == read_manifest(root / "data")["config_yaml"]
    own: list[str] = []
    assert predict(_config(trained, f"predict.output_dir={tmp_path / 'own'}"), log=own.append) == 0
    assert not any("records no training config" in line or "WARNING" in line for line in own)
    other = ["render.pixel_scale=0.2", "render.sky=[1.0,2.0,3.0,4.0,5.0]"]
    base = [*other, f"predict.output_dir={tmp_path / 'out'}"]
    with pytest.raises(ConfigError, match=f"{ckpt_path}: trained for another survey config"):
        predict(_config(trained, *base), log=lambda s: None)
    lines: list[str] = []
    assert predict(_config(trained, *base, "predict.force=true"), log=lines.append) == 0
    assert any("WARNING" in line and "predict.force=true" in line for line in lines)


def test_a_checkpoint_without_a_training_record_is_used_with_a_note(trained, tmp_path):
    """Checkpoints written before training recorded its data cannot be checked: predict says
    so in one line and goes on."""
    _, overrides = trained
    ckpt_path = [o for o in overrides if o.startswith("predict.checkpoint=")][0].split("=", 1)[1]
    ckpt = torch.load(ckpt_path, weights_only=True)
    del ckpt[PROVENANCE_KEY]
    path = tmp_path / "old.ckpt"
    torch.save(ckpt, path)
    lines: list[str] = []
    cfg = _config(trained, f"predict.checkpoint={path}", f"predict.output_dir={tmp_path / 'o'}")
    assert predict(cfg, log=lines.append) == 0
    assert f"[predict] {path} records no training config: its survey cannot be checked" in lines


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_check.sh)")
def test_predict_on_the_gpu_agrees_with_the_cpu(trained):
    """predict.device=cuda: the same crops and sources as on the CPU, fluxes within 1e-3."""
    root, _ = trained
    predict(
        _config(trained, f"predict.output_dir={root / 'cpu'}", "predict.device=cpu"),
        log=lambda s: None,
    )
    predict(
        _config(trained, f"predict.output_dir={root / 'gpu'}", "predict.device=cuda"),
        log=lambda s: None,
    )
    a, _ = read_catalog(root / "cpu" / "2583-2-136" / "catalog.h5")
    b, _ = read_catalog(root / "gpu" / "2583-2-136" / "catalog.h5")
    assert len(a["row"]) == len(b["row"])
    np.testing.assert_allclose(a["flux"], b["flux"], rtol=1e-3, atol=1e-4)
