"""Time one decoder step of an untrained model at batch 64 (architecture choices, no training).

    python benchmarks/bench_decoder_step.py student_rnn model.student_rnn.embed_dim=128
    python benchmarks/bench_decoder_step.py teacher --beam 5 --precision bf16

Builds the model from the config (default configs/multi30k_en_de.yaml) with the given
overrides, encodes 64 random 20-token sources and runs greedy search (or beam search with
`--beam K`) for a fixed 32 steps (eos disabled) ten times; prints the parameter count and
milliseconds per step (encoder included, amortised). With eos disabled every sentence runs
all 32 steps, so the ratio of two models' figures is the ratio of their decoding speeds on
outputs of equal length: a student's greedy step against the teacher's beam step is what the
speed bar compares. Greedy search runs as `nmt-kd translate` runs it, without the softmax
and scores (`--scores` adds them). `--precision bf16` builds the model under `mixed_bfloat16`, as trained
models decode (`decode.precision: trained`); `--xla` compiles the search with XLA.
"""

import argparse
import os
import shlex
import sys
import time

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("arch")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value")
    p.add_argument("--config", default="configs/multi30k_en_de.yaml")
    p.add_argument("--beam", type=int, default=1)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--xla", action="store_true")
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--scores", action="store_true",
                   help="greedy: also compute the softmax and the scores (translation does not)")
    p.add_argument("--out", help="JSON file: this measurement is appended to its `rows` (created if absent)")
    args = p.parse_intermixed_args()  # overrides may come before or after the options

    import keras
    import tensorflow as tf

    from nmt_kd.config import load_config
    from nmt_kd.decoding import beam_search, greedy_search
    from nmt_kd.models.registry import build_model

    keras.mixed_precision.set_global_policy("mixed_bfloat16" if args.precision == "bf16" else "float32")
    cfg = load_config(args.config, overrides=args.overrides)
    model = build_model(args.arch, cfg.model, cfg.vocab.size)
    batch, steps = args.batch, args.steps
    src = tf.constant(np.random.default_rng(0).integers(4, cfg.vocab.size, (batch, 20), dtype=np.int32))

    @tf.function(jit_compile=args.xla or None)
    def run(src):
        state = model.init_decode_state(model.encode(src, training=False), steps)
        if args.beam == 1:
            return greedy_search(model.decode_step, state, batch, steps, None, eos_id=-5,
                                 with_scores=args.scores)
        return beam_search(model.decode_step, state, batch, args.beam, steps, None, eos_id=-5)

    run(src)
    times = []
    for _ in range(10):
        t0 = time.perf_counter()
        run(src)["ids"].numpy()
        times.append(time.perf_counter() - t0)
    ms = sorted(times)[len(times) // 2] / steps * 1000
    print(f"{args.arch} beam {args.beam} {args.precision}{' xla' if args.xla else ''}"
          f"{' scored' if args.scores and args.beam == 1 else ''} "
          f"{' '.join(args.overrides)}: {model.count_params():,} params, {ms:.2f} ms/step "
          f"at batch {batch} (median of 10)")
    if args.out:
        _append(args.out, {
            "arch": args.arch, "overrides": args.overrides, "beam": args.beam,
            "precision": args.precision, "xla": args.xla, "greedy_scores": args.scores, "batch": batch, "steps": steps,
            "params": int(model.count_params()), "ms_per_step_median": round(ms, 3),
            "ms_per_step_all": [round(t / steps * 1000, 3) for t in times],
            "command": "python " + shlex.join(sys.argv),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        })


def _append(path: str, row: dict) -> None:
    """Adds `row` to the JSON file's `rows` (created if absent; written atomically)."""
    from nmt_kd.evaluate import machine_info
    from nmt_kd.fileio import read_json, write_json

    doc = read_json(path) if os.path.exists(path) else {
        "what": "decoder step times of untrained models (benchmarks/bench_decoder_step.py)",
        "machine": machine_info(), "rows": []}
    doc["rows"].append(row)
    write_json(path, doc)


if __name__ == "__main__":
    main()
