#!/usr/bin/env python3
"""What each decoding hot-path choice buys, measured side by side in one process.

    python benchmarks/bench_hot_paths.py --models runs/m/teacher runs/m/rnn_seq \\
        --src runs/m/data/test.src --out docs/bench/bench_hot_paths.json

For each model (greedy, and beam 5 where asked), the same sentences at batch 64, variants
interleaved over the repeats (median reported):
- `default`: what `nmt-kd translate` does: sources sorted by length into batches, one
  compiled `tf.function` per (beam, output-length bucket) holding the whole search loop;
- `unsorted`: batches in input order (more padding per batch), everything else the same;
- `one_bucket`: every batch decoded with the largest cache/loop bound (`decode.max_len_cap`)
  instead of its length bucket;
- `python_loop` (greedy only): the same compiled encoder and `decode_step`, but the token
  loop in Python (one `tf.function` call and a host round trip per output token).
Thread settings are compared in fresh processes (TF reads them at start-up):
`TF_NUM_INTRAOP_THREADS` 1 against the default (all cores), alternated `--repeats` times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def python_loop_backend(model, tok, cfg):
    """Greedy search with the token loop on the host (the baseline compiled loops replace)."""
    import tensorflow as tf

    from nmt_kd.backends import KerasBackend, SearchOutput
    from nmt_kd.decode_policy import sentence_limits_np
    from nmt_kd.tflite_translate import host_greedy_loop

    class PythonLoop(KerasBackend):
        def search(self, batch, beam, max_len, nbest):
            assert beam == 1
            src = batch.ids
            if not hasattr(self, "_pl_step"):
                self._pl_encode = {}
                self._pl_step = tf.function(model.decode_step, reduce_retracing=True)
            if max_len not in self._pl_encode:
                self._pl_encode[max_len] = tf.function(
                    lambda s, m=max_len: model.init_decode_state(model.encode(s, training=False), m),
                    reduce_retracing=True)
            state = [self._pl_encode[max_len](tf.constant(src))]

            def step(tokens, t):
                logits, state[0] = self._pl_step(tf.constant(tokens), tf.constant(t, tf.int32), state[0])
                logp = tf.nn.log_softmax(tf.cast(logits, tf.float32)).numpy()
                nxt = logp.argmax(axis=-1).astype(np.int32)
                return nxt, logp[np.arange(len(nxt)), nxt]

            limits = sentence_limits_np(src, self.cfg, max_len)
            return SearchOutput(*host_greedy_loop(step, len(src), limits, max_len))

    return PythonLoop(model, tok, cfg)


def one_bucket_backend(model, tok, cfg):
    """Every batch searched with the largest bound (`decode.max_len_cap`), not its bucket."""
    from nmt_kd.backends import KerasBackend

    class OneBucket(KerasBackend):
        def search(self, batch, beam, max_len, nbest):
            return super().search(batch, beam, self.cfg.max_len_cap, nbest)

    return OneBucket(model, tok, cfg)


def decode_variants(model_dir: str, lines: list[str], beams: list[int], repeats: int,
                    batch_size: int) -> list[dict]:
    from nmt_kd.config import DecodeConfig
    from nmt_kd.models.persistence import load_model_dir
    from nmt_kd.translate import Translator

    model, tok, _ = load_model_dir(model_dir)
    cfg = DecodeConfig()
    rows = []
    for beam in beams:
        variants = {"default": (Translator(model, tok, cfg), True),
                    "unsorted": (Translator(model, tok, cfg), False),
                    "one_bucket": (Translator.from_backend(one_bucket_backend(model, tok, cfg)), True)}
        if beam == 1:
            variants["python_loop"] = (Translator.from_backend(python_loop_backend(model, tok, cfg)), True)
        outputs = {}
        for name, (tr, sort) in variants.items():  # warm-up: traces every shape
            outputs[name] = tr.translate(lines, beam=beam, batch_size=batch_size, sort=sort).hypotheses
        times: dict[str, list[float]] = {n: [] for n in variants}
        for _ in range(repeats):
            for name, (tr, sort) in variants.items():
                t0 = time.perf_counter()
                tr.translate(lines, beam=beam, batch_size=batch_size, sort=sort)
                times[name].append(time.perf_counter() - t0)
        base = statistics.median(times["default"])
        for name in variants:
            med = statistics.median(times[name])
            same = float(np.mean([a == b for a, b in zip(outputs[name], outputs["default"], strict=True)]))
            rows.append({"model": model_dir, "beam": beam, "batch_size": batch_size,
                         "variant": name, "sentences": len(lines),
                         "sentences_per_second": round(len(lines) / med, 1),
                         "default_over_variant": round(med / base, 2),
                         "same_output_as_default": round(same, 4), "repeats": repeats})
            print(f"{Path(model_dir).name:>12} beam {beam} {name:>12}: {len(lines) / med:8.1f} sent/s, "
                  f"default is {med / base:.2f}x this (same output: {100 * same:.1f}%)", flush=True)
    return rows


_THREAD_PROBE = """
import json, sys, time
from nmt_kd.config import DecodeConfig
from nmt_kd.models.persistence import load_model_dir
from nmt_kd.translate import Translator, read_input_lines
model, tok, _ = load_model_dir(sys.argv[1])
lines = read_input_lines(sys.argv[2])[: int(sys.argv[3])]
tr = Translator(model, tok, DecodeConfig())
beam, bs = int(sys.argv[4]), int(sys.argv[5])
tr.translate(lines, beam=beam, batch_size=bs)
t0 = time.perf_counter(); tr.translate(lines, beam=beam, batch_size=bs)
print(json.dumps({"seconds": time.perf_counter() - t0}))
"""


def thread_settings(model_dir: str, src: str, n: int, beam: int, batch_size: int, repeats: int) -> list[dict]:
    times: dict[str, list[float]] = {"1": [], "default": []}
    for _ in range(repeats):
        for setting in times:
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
            env.pop("TF_NUM_INTRAOP_THREADS", None)
            if setting != "default":
                env["TF_NUM_INTRAOP_THREADS"] = setting
            out = subprocess.run([sys.executable, "-c", _THREAD_PROBE, model_dir, src, str(n),
                                  str(beam), str(batch_size)], capture_output=True, text=True,
                                 env=env, check=True)
            times[setting].append(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])
    base = statistics.median(times["default"])
    rows = []
    for setting, ts in times.items():
        med = statistics.median(ts)
        rows.append({"model": model_dir, "beam": beam, "batch_size": batch_size,
                     "intra_op_threads": setting, "sentences": n,
                     "sentences_per_second": round(n / med, 1),
                     "default_over_setting": round(med / base, 2), "repeats": repeats})
        print(f"{Path(model_dir).name:>12} beam {beam} bs {batch_size} intra-op threads {setting:>7}: "
              f"{n / med:8.1f} sent/s", flush=True)
    return rows


def main() -> None:
    from nmt_kd.evaluate import machine_info
    from nmt_kd.fileio import write_json
    from nmt_kd.translate import read_input_lines

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", required=True)
    p.add_argument("--src", required=True)
    p.add_argument("--sentences", type=int, default=500)
    p.add_argument("--beams", type=int, nargs="+", default=[1])
    p.add_argument("--teacher-beam", type=int, default=5, help="also time the first model at this beam")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out")
    args = p.parse_args()
    lines = read_input_lines(args.src)[: args.sentences]
    result = {"machine": machine_info(), "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "decoding": [], "threads": []}
    for i, m in enumerate(args.models):
        beams = sorted(set(args.beams) | ({args.teacher_beam} if i == 0 and args.teacher_beam else set()))
        result["decoding"] += decode_variants(m, lines, beams, args.repeats, args.batch_size)
    for m in args.models:
        for bs in (1, args.batch_size):
            n = min(len(lines), 100 if bs == 1 else len(lines))
            result["threads"] += thread_settings(m, args.src, n, 1, bs, args.repeats)
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
