"""`hpc-bliss` command line: every command takes a config file and key=value overrides."""

from __future__ import annotations

import argparse
import sys

from hpc_bliss.config import load_config
from hpc_bliss.errors import HpcBlissError


def cmd_simulate(args: argparse.Namespace) -> int:
    from hpc_bliss.stages import simulate

    cfg = load_config(args.config, args.overrides)
    return simulate.run(cfg, args.out, args.n_images, args.text)


def cmd_generate(args: argparse.Namespace) -> int:
    from hpc_bliss.stages.generate import generate

    cfg = load_config(args.config, args.overrides)
    return generate(cfg, overwrite=args.overwrite)


def cmd_inspect(args: argparse.Namespace) -> int:
    from hpc_bliss.io.inspect import inspect_command

    validate = args.command == "validate" or args.validate
    refresh = getattr(args, "refresh", False)
    return inspect_command(args.dir, validate=validate, as_json=args.json, refresh=refresh)


def cmd_train(args: argparse.Namespace) -> int:
    from hpc_bliss.stages import train

    return train.run(load_config(args.config, args.overrides))


def cmd_evaluate(args: argparse.Namespace) -> int:
    from hpc_bliss.stages.evaluate import evaluate

    # `ckpt=PATH` is accepted as a short form of `evaluate.checkpoint=PATH`
    overrides = [
        "evaluate.checkpoint=" + o[5:] if o.startswith("ckpt=") else o for o in args.overrides
    ]
    evaluate(load_config(args.config, overrides))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from hpc_bliss.stages.predict import predict

    # `ckpt=PATH` is accepted as a short form of `predict.checkpoint=PATH`
    overrides = [
        "predict.checkpoint=" + o[5:] if o.startswith("ckpt=") else o for o in args.overrides
    ]
    return predict(load_config(args.config, overrides))


def cmd_pipeline(args: argparse.Namespace) -> int:
    from hpc_bliss.stages import pipeline

    cfg = load_config(args.config, args.overrides)
    return pipeline.run(cfg, args.config, args.overrides, args.processes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpc-bliss", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, text in (
        ("simulate", cmd_simulate, "sample and render one batch; write a PNG and a summary"),
        ("generate", cmd_generate, "simulate HDF5 shards (under mpirun/srun: one rank each)"),
        ("train", cmd_train, "train the encoder on train.data_dir's shards (DDP if devices>1)"),
        ("evaluate", cmd_evaluate, "score evaluate.checkpoint on evaluate.data_dir's test split"),
        ("predict", cmd_predict, "catalog real survey fields (predict.fields) with a checkpoint"),
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
        elif name == "generate":
            p.add_argument(
                "--overwrite", action="store_true", help="replace shards already in output_dir"
            )
        elif name == "simulate":
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
        else:
            p.add_argument(
                "--refresh",
                action="store_true",
                help="first accept deliberate edits of shard data (made through HDF5, e.g. "
                "h5py): recompute each shard's content_sha256, record the edit in manifest.json, "
                "add Fletcher-32 checksums to older shards; refuses damaged data and changed "
                "shapes or dtypes, modifying nothing",
            )
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
