"""Throughput of `hpc-bliss predict`'s encoding: five-band SDSS fields per second per device.

    .venv/bin/python scripts/bench_predict.py configs/sdss_m2.yaml --device cpu --fields 2
    .venv/bin/python scripts/bench_predict.py configs/sdss_m2.yaml --device cuda --fields 50 \\
        --batch-size 266 --field ../shared/data/sdss/2583/2/136

Encodes every crop of a 1489 × 2048 frame (the stage's own code: crops, posterior mode with
its probabilities, the owned tiles) ``--fields`` times after one warm-up field. The frame is
the real field when ``--field`` is given (its reading, decompression and alignment are timed
apart), else noise with stars at the config's sky. The encoder is the checkpoint's, else one
of the config's size (train.hidden, train.n_blocks) with its initial weights: the cost does
not depend on the weights. Prints one line per measurement and a summary.
"""

from __future__ import annotations

import argparse
import time

import torch

from hpc_bliss.config import load_config
from hpc_bliss.predict.crops import CropLayout
from hpc_bliss.predict.field_run import read_for
from hpc_bliss.predict.work import encode_rows
from hpc_bliss.stages.train import model_arguments
from hpc_bliss.train.checkpoint import load_encoder
from hpc_bliss.train.lit_module import EncoderModule

FRAME = (1489, 2048)  #: an SDSS frame, rows × columns


def encoder_for(cfg, checkpoint: str | None, device: torch.device):
    if checkpoint:
        return load_encoder(checkpoint, device)[0]
    t = cfg.train
    module = EncoderModule(
        len(cfg.prior.bands), cfg.prior.tile_slen, t.hidden, t.n_blocks, **model_arguments(cfg)
    )
    return module.encoder.to(device).eval()


def frame_image(cfg, field: str | None) -> tuple[torch.Tensor, float]:
    """(B, H, W) image and the seconds its reading took (0 for the synthetic one)."""
    if field:
        t0 = time.perf_counter()
        image = torch.from_numpy(read_for(cfg, field).image)
        return image, time.perf_counter() - t0
    gen = torch.Generator().manual_seed(0)
    sky = torch.tensor(cfg.render.sky)[:, None, None]
    nelec = torch.tensor(cfg.render.nelec_per_nmgy)[:, None, None]
    image = torch.randn((len(sky), *FRAME), generator=gen) * (sky / nelec).sqrt()
    image += (torch.rand(FRAME, generator=gen) > 0.995) * 20.0
    return image, 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--fields", type=int, default=2, help="fields timed (after a warm-up)")
    parser.add_argument("--batch-size", type=int, default=16, help="crops per encoder call")
    parser.add_argument("--checkpoint")
    parser.add_argument("--field", help="an SDSS field directory (default: a synthetic frame)")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    device = torch.device(args.device)
    encoder = encoder_for(cfg, args.checkpoint, device)
    image, read_s = frame_image(cfg, args.field)
    p = cfg.prior
    layout = CropLayout.make(FRAME, (p.image_height, p.image_width), p.tile_slen, 1)
    image = image[:, : layout.frame_tiles[0] * 2, : layout.frame_tiles[1] * 2].to(device)
    rows = list(range(layout.shape[0]))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        encode_rows(encoder, image, layout, rows, args.batch_size)  # warm-up
        sync()
        t0 = time.perf_counter()
        for _ in range(args.fields):
            encode_rows(encoder, image, layout, rows, args.batch_size)
        sync()
    seconds = (time.perf_counter() - t0) / args.fields
    n_crops = layout.shape[0] * layout.shape[1]
    where = f"{device} ({torch.get_num_threads()} threads)" if device.type == "cpu" else device
    print(
        f"[bench_predict] {where}: {n_crops} crops of {p.image_height}×{p.image_width} px per "
        f"field, batch {args.batch_size}: {seconds:.3f} s per field, {1 / seconds:.2f} fields/s "
        f"per device ({n_crops / seconds:.0f} crops/s)"
        + (f"; reading the field took {read_s:.1f} s (once)" if args.field else "")
    )


if __name__ == "__main__":
    main()
