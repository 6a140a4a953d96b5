"""`hpc-bliss` command line: every command takes a config file and key=value overrides."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from hpc_bliss.config import Config, load_config
from hpc_bliss.errors import HpcBlissError, LaunchError


def _simulate(cfg: Config, out_dir: Path, n_images: int | None = None) -> dict:
    """Sample and render one batch, save a PNG of the first image, return a summary (with the
    first image's reference band as text lines, "text")."""
    from hpc_bliss.parallel.env import detect, pick_device
    from hpc_bliss.plotting import plot_bands, text_picture
    from hpc_bliss.seeding import make_generator
    from hpc_bliss.simulate.batch import make_renderer
    from hpc_bliss.simulate.prior import sample_prior

    device = pick_device(cfg.generate.device, detect(use_mpi=False))
    n = n_images or cfg.generate.batch_size
    gen = make_generator(cfg.seed, "preview", device=device)
    renderer = make_renderer(cfg, device)
    t0 = time.perf_counter()
    catalog = sample_prior(cfg.prior, n, gen, device)
    t1 = time.perf_counter()
    batch = renderer.render(catalog, gen)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t2 = time.perf_counter()
    full = catalog.to_full_catalog()
    k = int(full["n_sources"][0])
    png = plot_bands(
        batch.images[0],
        full["plocs"][0, :k],
        full["source_type"][0, :k, 0],
        list(cfg.prior.bands),
        out_dir / "sample.png",
        title=f"{cfg.name}: image 0, {k} sources (+ star, o galaxy)",
    )
    ref = cfg.prior.reference_band
    text = text_picture(batch.images[0, ref], full["plocs"][0, :k], full["source_type"][0, :k, 0])
    n_src = catalog["n_sources"].float()
    galaxies = int(catalog.galaxy_bools.sum())
    return {
        "images": n,
        "shape": tuple(batch.images.shape[1:]),
        "device": str(device),
        "sources_per_image": float(n_src.sum(dim=(1, 2)).mean()),
        "sources_per_tile": float(n_src.mean()),
        "galaxy_fraction": galaxies / max(int(n_src.sum()), 1),
        "prior_s": t1 - t0,
        "render_s": t2 - t1,
        "png": str(png),
        "text": text,
        "n_sources_0": k,
    }


def cmd_simulate(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    out = Path(args.out or Path("runs") / cfg.name / "preview")
    s = _simulate(cfg, out, args.n_images)
    c, h, w = s["shape"]
    print(f"[simulate] {cfg.name}: {s['images']} images of {c} bands × {h}×{w} px on {s['device']}")
    print(
        f"[simulate] {s['sources_per_image']:.1f} sources per image "
        f"({s['sources_per_tile']:.3f} per tile), galaxy fraction {s['galaxy_fraction']:.2f}"
    )
    rate = s["images"] / max(s["render_s"], 1e-9)
    print(
        f"[simulate] prior {s['prior_s']:.3f} s, render {s['render_s']:.3f} s ({rate:.1f} images/s)"
    )
    print(f"[simulate] wrote {s['png']}")
    if args.text:
        band = cfg.prior.bands[cfg.prior.reference_band]
        print(f"[simulate] image 0, band {band}, {s['n_sources_0']} sources (S star, G galaxy):")
        print("\n".join(s["text"]))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from hpc_bliss.parallel.generate import generate

    cfg = load_config(args.config, args.overrides)
    return generate(cfg, overwrite=args.overwrite)


def cmd_inspect(args: argparse.Namespace) -> int:
    import json

    from hpc_bliss.io.inspect import format_summary, summarize, validate_dir

    validate = args.command == "validate" or args.validate
    try:
        summary = summarize(args.dir)
    except HpcBlissError as err:
        if not validate:
            raise
        print(f"hpc-bliss: error: {err}", file=sys.stderr)  # validation says more below
    else:
        print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    if not validate:
        return 0
    problems = validate_dir(args.dir)
    for problem in problems:
        print(f"INVALID: {problem}")
    print(f"[validate] {len(problems)} problem(s) in {args.dir}")
    return 1 if problems else 0


def cmd_train(args: argparse.Namespace) -> int:
    from hpc_bliss.train.run import train

    cfg = load_config(args.config, args.overrides)
    result = train(cfg)
    if result["rank"] == 0:
        m = result["metrics"]
        acc = m.get("val/n_sources_accuracy")
        print(
            f"[train] step {result['global_step']}: val loss {m.get('val/loss', float('nan')):.4f}"
            + (f", val n_sources accuracy {acc:.4f}" if acc is not None else "")
        )
        print(f"[train] checkpoints: {result['best'] or '-'} (best), {result['last']} (last)")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from hpc_bliss.evaluate.run import evaluate

    # `ckpt=PATH` is accepted as a short form of `evaluate.checkpoint=PATH`
    overrides = [
        "evaluate.checkpoint=" + o[5:] if o.startswith("ckpt=") else o for o in args.overrides
    ]
    evaluate(load_config(args.config, overrides))
    return 0


def _local_mpirun(processes: int) -> list[str] | None:
    """An `mpirun -n N` prefix when N > 1 and an MPI that mpi4py can load is here, else None
    (after one line saying why the MPI stages run as one process)."""
    from hpc_bliss.parallel.env import mpi_problem, mpirun_command

    if processes < 2:
        return None
    problem = mpi_problem()
    mpirun = mpirun_command()
    if problem or mpirun is None:
        why = problem or "no mpirun found (on PATH or beside this Python)"
        print(f"[pipeline] MPI is not available ({why}): generate and evaluate run as 1 process")
        return None
    extra = ["--oversubscribe"] if processes > (os.cpu_count() or 1) else []
    return [mpirun, "-n", str(processes), *extra]


def _run_stage(name: str, cmd: list[str]) -> None:
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    if subprocess.run(cmd, env=env).returncode != 0:
        raise LaunchError(f"pipeline stage '{name}' failed: {shlex.join(cmd)}")


def cmd_pipeline(args: argparse.Namespace) -> int:
    """generate → train → evaluate on this machine, each stage resuming what is already done:
    generation and evaluation with `--processes` MPI ranks (when mpirun and mpi4py work),
    training as `--processes` DDP processes (CPU/gloo, or one per GPU)."""
    cfg = load_config(args.config, args.overrides)
    n = max(1, args.processes)
    py = [sys.executable, "-m", "hpc_bliss"]
    data = cfg.generate.output_dir
    common = [
        str(args.config),
        *args.overrides,
        f"train.data_dir={data}",
        f"evaluate.data_dir={data}",
    ]
    mpirun = _local_mpirun(n) or []
    ranks = int(mpirun[2]) if mpirun else 1
    print(f"[pipeline] 1/3 generate → {data} ({ranks} rank(s))", flush=True)
    _run_stage("generate", [*mpirun, *py, "generate", *common])
    gpus = torch.cuda.device_count()
    devices = min(n, gpus) if gpus else n
    accel = "gpu" if gpus else "cpu"
    print(
        f"[pipeline] 2/3 train → {cfg.train.output_dir} ({devices} {accel} process(es))", flush=True
    )
    _run_stage(
        "train", [*py, "train", *common, f"train.devices={devices}", f"train.accelerator={accel}"]
    )
    ckpt = Path(cfg.train.output_dir) / "checkpoints" / "best.ckpt"
    if not ckpt.exists():
        ckpt = ckpt.with_name("last.ckpt")
    print(
        f"[pipeline] 3/3 evaluate {ckpt} → {cfg.evaluate.output_dir} ({ranks} rank(s))", flush=True
    )
    _run_stage("evaluate", [*mpirun, *py, "evaluate", *common, f"evaluate.checkpoint={ckpt}"])
    out = cfg.evaluate.output_dir
    print(
        f"[pipeline] done: {out}/report.md, {out}/confusion.png, {out}/detection_vs_mag.png, "
        f"{out}/example.png"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpc-bliss", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, text in (
        ("simulate", cmd_simulate, "sample and render one batch; write a PNG and a summary"),
        ("generate", cmd_generate, "simulate HDF5 shards (under mpirun/srun: one rank each)"),
        ("train", cmd_train, "train the encoder on train.data_dir's shards (DDP if devices>1)"),
        ("evaluate", cmd_evaluate, "score evaluate.checkpoint on evaluate.data_dir's test split"),
        ("pipeline", cmd_pipeline, "run every stage on this machine (a small local default)"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("config", help="YAML config file, e.g. configs/smoke.yaml")
        p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. seed=3")
        if name == "pipeline":
            p.add_argument(
                "--processes",
                type=int,
                default=2,
                help="MPI ranks for generate/evaluate and DDP processes for train",
            )
        elif name in ("train", "evaluate"):
            pass
        elif name == "generate":
            p.add_argument(
                "--overwrite", action="store_true", help="replace shards already in output_dir"
            )
        else:
            p.add_argument("--out", help="output directory (default runs/<name>/preview)")
            p.add_argument(
                "--n-images", type=int, help="images to render (default generate.batch_size)"
            )
            p.add_argument(
                "--text",
                action="store_true",
                help="also print image 0's reference band as text (for a terminal without display)",
            )
        p.set_defaults(func=func)
    from hpc_bliss.launch.submit import add_submit_parser

    add_submit_parser(sub)
    for name, text in (
        ("inspect", "summarise a shard directory (splits, sources per tile, fluxes)"),
        ("validate", "check every shard of a directory; name each bad file (exit 1)"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("dir", help="a generate.output_dir")
        p.add_argument("--json", action="store_true", help="print the summary as JSON")
        if name == "inspect":
            p.add_argument("--validate", action="store_true", help="also validate every shard")
        p.set_defaults(func=cmd_inspect)
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line; ``key=value`` overrides may come before, between or after the
    options (``submit train cfg.yaml a=1 --nodes 2 b=2``): argparse alone takes only the first
    run of them."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        return args.func(args)
    except (HpcBlissError, FileNotFoundError) as err:
        print(f"hpc-bliss: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
