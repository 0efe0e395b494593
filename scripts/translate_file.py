#!/usr/bin/env python3
"""Translate a file with any nmt-kd model: a model directory (teacher or student), a TFLite
export, or a SavedModel export (`nmt-kd export --format savedmodel`).

    python scripts/translate_file.py MODEL INPUT OUTPUT [--beam 5] [--batch-size 64]

INPUT is read one chunk at a time and OUTPUT appears only when complete, line for line with
the input (an empty input line gives an empty output line). Model directories and TFLite
exports go through `nmt-kd translate` (length-bucketed batches, the model's own
normalisation); a SavedModel is run through its `serving_default` signature, which
normalises, tokenizes and searches inside the graph (its beam was fixed at export time).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def translate_savedmodel(model: Path, src: str, out: str, batch_size: int, chunk: int) -> int:
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the SentencePiece ops)

    from nmt_kd.fileio import atomic_open
    from nmt_kd.translate import iter_input_lines

    serve = tf.saved_model.load(str(model)).signatures["serving_default"]
    done, t0 = 0, time.perf_counter()
    with atomic_open(out) as f:
        buf: list[str] = []

        def flush() -> None:
            for i in range(0, len(buf), batch_size):
                part = serve(tf.constant(buf[i: i + batch_size]))["translations"].numpy()
                f.writelines(t.decode("utf-8") + "\n" for t in part)
            buf.clear()

        for line in iter_input_lines(src, clean=False):  # the graph normalises
            buf.append(line)
            done += 1
            if len(buf) >= chunk:
                flush()
        flush()
    print(f"translated {done} lines in {time.perf_counter() - t0:.1f}s -> {out}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="model directory, TFLite export or SavedModel export")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--beam", type=int, help="beam size (model directories; TFLite is greedy)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--chunk-lines", type=int, default=10000)
    p.add_argument("--config", "-c", help="config whose decode section to use (default: built-in)")
    args = p.parse_args(argv)
    model = Path(args.model)
    if (model / "saved_model.pb").is_file():
        from nmt_kd.errors import UserError

        try:
            return translate_savedmodel(model, args.input, args.output, args.batch_size,
                                        args.chunk_lines)
        except (UserError, OSError) as e:
            print(f"translate_file.py: error: {e}", file=sys.stderr)
            return 2
    from nmt_kd.cli import main as cli_main

    cmd = ["translate", "--model", str(model), "--input", args.input, "--output", args.output,
           "--batch-size", str(args.batch_size), "--chunk-lines", str(args.chunk_lines)]
    if args.beam:
        cmd += ["--beam", str(args.beam)]
    if args.config:
        cmd += ["--config", args.config]
    return cli_main(cmd)


if __name__ == "__main__":
    sys.exit(main())
