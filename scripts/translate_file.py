#!/usr/bin/env python3
"""Translate a file with any nmt-kd model: a model directory (teacher or student), a TFLite
export, or a SavedModel export (`nmt-kd export --format savedmodel`).

    python scripts/translate_file.py MODEL INPUT OUTPUT [--beam 5] [--batch-size 64]

INPUT is read one chunk at a time and OUTPUT appears only when complete, line for line with
the input (an empty input line gives an empty output line). Every kind of model goes through
`nmt-kd translate` (length-sorted batches, the model's own normalisation): a SavedModel is run
through its `serving_default` signature (`nmt_kd.savedmodel_translate`), which tokenizes and
searches inside the graph with the beam fixed at export time (--beam does not apply to it).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="model directory, TFLite export or SavedModel export")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--beam", type=int, help="beam size (model directories; TFLite is greedy, a SavedModel has its own)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--chunk-lines", type=int, default=10000)
    p.add_argument("--config", "-c", help="config whose decode section to use (default: built-in)")
    args = p.parse_args(argv)
    from nmt_kd.cli import main as cli_main
    from nmt_kd.savedmodel_translate import is_savedmodel_dir

    cmd = ["translate", "--model", args.model, "--input", args.input, "--output", args.output,
           "--batch-size", str(args.batch_size), "--chunk-lines", str(args.chunk_lines)]
    if args.beam and not is_savedmodel_dir(args.model):
        cmd += ["--beam", str(args.beam)]
    if args.config:
        cmd += ["--config", args.config]
    return cli_main(cmd)


if __name__ == "__main__":
    sys.exit(main())
