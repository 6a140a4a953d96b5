"""The `simulate` stage: one batch sampled and rendered on this machine, written as a PNG of
image 0 (sources marked), and summarised (a preview of what a config makes)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hpc_bliss.config import Config
from hpc_bliss.parallel.env import ProcessEnv, pick_device, using_device
from hpc_bliss.plotting import plot_bands, text_picture
from hpc_bliss.seeding import make_generator
from hpc_bliss.simulate.batch import make_renderer, simulate_batch


@dataclass(frozen=True)
class Preview:
    """What :func:`preview` made and measured."""

    images: int
    shape: tuple[int, int, int]  #: bands, height, width
    device: str
    sources_per_image: float
    sources_per_tile: float
    galaxy_fraction: float
    prior_s: float
    render_s: float
    png: str
    text: list[str]  #: image 0's reference band as text lines
    n_sources_0: int  #: sources in image 0


def preview(cfg: Config, out_dir: Path, n_images: int | None = None) -> Preview:
    """Sample and render one batch (``generate.batch_size`` images unless ``n_images``), save a
    PNG of the first image to ``out_dir/sample.png``."""
    env = ProcessEnv(0, 1, 0, 1)
    device = pick_device(cfg.generate.device, env)
    n = n_images or cfg.generate.batch_size
    times: dict[str, float] = {}
    with using_device(device, env):
        gen = make_generator(cfg.seed, "preview", device=device)
        catalog, batch = simulate_batch(cfg, n, gen, make_renderer(cfg, device), times)
    full = catalog.to_full_catalog()
    k = int(full["n_sources"][0])
    plocs, types = full["plocs"][0, :k], full["source_type"][0, :k, 0]
    title = f"{cfg.name}: image 0, {k} sources (+ star, o galaxy)"
    png = plot_bands(
        batch.images[0], plocs, types, list(cfg.prior.bands), out_dir / "sample.png", title
    )
    n_src = catalog["n_sources"].float()
    c, h, w = batch.images.shape[1:]
    return Preview(
        images=n,
        shape=(int(c), int(h), int(w)),
        device=str(device),
        sources_per_image=float(n_src.sum(dim=(1, 2)).mean()),
        sources_per_tile=float(n_src.mean()),
        galaxy_fraction=int(catalog.galaxy_bools.sum()) / max(int(n_src.sum()), 1),
        prior_s=times["sample_s"],
        render_s=times["render_s"],
        png=str(png),
        text=text_picture(batch.images[0, cfg.prior.reference_band], plocs, types),
        n_sources_0=k,
    )


def run(cfg: Config, out: str | None, n_images: int | None, text: bool) -> int:
    """`hpc-bliss simulate`: the preview, printed."""
    s = preview(cfg, Path(out or Path("runs") / cfg.name / "preview"), n_images)
    c, h, w = s.shape
    print(f"[simulate] {cfg.name}: {s.images} images of {c} bands × {h}×{w} px on {s.device}")
    print(
        f"[simulate] {s.sources_per_image:.1f} sources per image "
        f"({s.sources_per_tile:.3f} per tile), galaxy fraction {s.galaxy_fraction:.2f}"
    )
    rate = s.images / max(s.render_s, 1e-9)
    print(f"[simulate] prior {s.prior_s:.3f} s, render {s.render_s:.3f} s ({rate:.1f} images/s)")
    print(f"[simulate] wrote {s.png}")
    if text:
        band = cfg.prior.bands[cfg.prior.reference_band]
        print(f"[simulate] image 0, band {band}, {s.n_sources_0} sources (S star, G galaxy):")
        print("\n".join(s.text))
    return 0
