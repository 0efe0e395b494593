"""The `nmt-kd` command line: one subcommand per job, each loads the config and calls one function.

A user's mistake (bad config, bad corpus, missing file) is printed as one sentence on stderr
with exit code 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# TensorFlow's C++ start-up chatter is noise for a command-line user.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from nmt_kd import __version__  # noqa: E402
from nmt_kd.errors import UserError  # noqa: E402


def _add_config_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--config", "-c", required=required, help="experiment YAML file")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override one config value (repeatable), e.g. --set train.max_steps=100",
    )


def _load(args) -> object:
    from nmt_kd.config import load_config

    return load_config(args.config, args.overrides)


def _run_dir(args, cfg) -> Path:
    return Path(args.run_dir or cfg.pipeline.run_dir)


def cmd_prepare(args) -> int:
    from nmt_kd.config import config_from_dict, config_to_dict
    from nmt_kd.data.prepare import prepare_data
    from nmt_kd.tokenizer import build_vocab

    if args.src or args.tgt:
        if not (args.src and args.tgt):
            raise UserError("--src and --tgt must be given together")
        if args.config:
            raise UserError("give either --config or --src/--tgt, not both")
        tree = config_to_dict(_load(args))
        tree["data"].update(source="files", train_src=args.src, train_tgt=args.tgt)
        cfg = config_from_dict(tree, "--src/--tgt")
    else:
        if not args.config:
            raise UserError("prepare needs --config FILE, or --src FILE --tgt FILE")
        cfg = _load(args)
    run_dir = _run_dir(args, cfg)
    prepare_data(cfg, run_dir)
    build_vocab(cfg.vocab, run_dir)
    return 0


def cmd_pipeline(args) -> int:
    cfg = _load(args)
    run_dir = _run_dir(args, cfg)
    from nmt_kd.data.prepare import prepare_data
    from nmt_kd.tokenizer import build_vocab

    print(f"== prepare ({cfg.data.source}) -> {run_dir / 'data'}", flush=True)
    prepare_data(cfg, run_dir)
    print(f"== vocab -> {run_dir / 'vocab'}", flush=True)
    build_vocab(cfg.vocab, run_dir)
    print(
        "The teacher, distillation, student and report stages arrive with the pipeline issue; "
        "this run prepared the corpus and the joint tokenizer.", flush=True,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nmt-kd",
        description="Distil a Transformer translation teacher into small, fast students.",
    )
    parser.add_argument("--version", action="version", version=f"nmt-kd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("prepare", help="clean and split a corpus; train the joint SentencePiece model")
    _add_config_args(p)
    p.add_argument("--src", help="source-language file (shortcut instead of --config)")
    p.add_argument("--tgt", help="target-language file, line-aligned with --src")
    p.add_argument("--run-dir", help="output directory (default: pipeline.run_dir)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("pipeline", help="run an experiment's stages from one YAML file")
    _add_config_args(p, required=True)
    p.add_argument("--run-dir", help="output directory (default: pipeline.run_dir)")
    p.set_defaults(func=cmd_pipeline)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"nmt-kd: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nmt-kd: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
