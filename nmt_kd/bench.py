"""Decoding speed of several models side by side, in one process, interleaved.

Every (model, beam, batch size) is warmed up once on the whole input, then timed `repeats`
times; the repeats of all models are interleaved (model A, B, C, A, B, C, ...) so that a
noisy machine slows them alike and the ratios between models hold. Reports the median and
the spread (min, max) of sentences/s and target tokens/s.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

from nmt_kd.config import DecodeConfig


def bench_decoding(
    model_dirs: list[str | Path], src_lines: list[str], beams: tuple[int, ...] = (1, 5),
    batch_sizes: tuple[int, ...] = (1, 64), repeats: int = 3, batch1_sentences: int = 100,
    decode_cfg: DecodeConfig | None = None, log: Callable[[str], None] = print,
) -> dict:
    from nmt_kd.evaluate import machine_info
    from nmt_kd.translate import open_translator

    decode_cfg = decode_cfg or DecodeConfig()
    loaded = []  # a list, not a dict: the same directory may be listed twice (a control)
    for d in model_dirs:
        tr, meta, _ = open_translator(d, decode_cfg)
        loaded.append((str(d), tr, meta, int(tr.model.count_params())))
    rows = []
    for beam in beams:
        # TFLite exports decode greedily: they sit out the beam rows
        translators = [t for t in loaded if beam == 1 or not t[2].get("format", "").startswith("tflite")]
        for bs in batch_sizes:
            lines = src_lines[:batch1_sentences] if bs == 1 else src_lines
            times: list[list[float]] = [[] for _ in translators]
            # warm-up: traces every length bucket, and counts the output tokens
            tokens = [sum(tr.translate(lines, beam=beam, batch_size=bs).token_counts)
                      for _, tr, _, _ in translators]
            for _ in range(repeats):
                for i, (_, tr, _, _) in enumerate(translators):
                    t0 = time.perf_counter()
                    tr.translate(lines, beam=beam, batch_size=bs)
                    times[i].append(time.perf_counter() - t0)
            for i, (d, _, meta, params) in enumerate(translators):
                sps = [len(lines) / t for t in times[i]]
                tps = [tokens[i] / t for t in times[i]]
                row = {"model": d, "model_type": meta.get("model_type"), "kd": meta.get("kd"),
                       "format": meta.get("format"), "params": params, "beam": beam, "batch_size": bs, "sentences": len(lines),
                       "sentences_per_second": round(statistics.median(sps), 2),
                       "sentences_per_second_min": round(min(sps), 2),
                       "sentences_per_second_max": round(max(sps), 2),
                       "tokens_per_second": round(statistics.median(tps), 1), "repeats": repeats}
                rows.append(row)
                log(f"{Path(d).name:>24} beam {beam} batch {bs:>3}: {row['sentences_per_second']:8.1f} sent/s "
                    f"(min {row['sentences_per_second_min']:.1f}, max {row['sentences_per_second_max']:.1f}), "
                    f"{row['tokens_per_second']:9.0f} tok/s")
    return {"machine": machine_info(), "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": rows}


def speed_ratios(result: dict, reference: str, ref_beam: int) -> list[dict]:
    """Each model's sentences/s over the reference model's at `ref_beam`, per batch size."""
    ref = {r["batch_size"]: r["sentences_per_second"] for r in result["rows"]
           if r["model"] == reference and r["beam"] == ref_beam}
    return [{"model": r["model"], "beam": r["beam"], "batch_size": r["batch_size"],
             "ratio": round(r["sentences_per_second"] / ref[r["batch_size"]], 2)}
            for r in result["rows"] if r["batch_size"] in ref]


_MEMORY_PROBE = """
import json, resource, sys
from nmt_kd.config import config_from_dict
from nmt_kd.translate import open_translator, read_input_lines
args = json.loads(sys.argv[1])
cfg = config_from_dict({"decode": args["decode"]}).decode
import tensorflow  # noqa: F401  (the baseline includes the framework itself)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tr, _, _ = open_translator(args["model"], cfg)
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tr.translate(read_input_lines(args["src"])[: args["sentences"]], beam=args["beam"],
             batch_size=args["batch_size"])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"baseline_mb": base / 1024, "after_load_mb": loaded / 1024, "peak_mb": peak / 1024}))
"""


def peak_memory(model_dir: str | Path, src: str | Path, beam: int, batch_size: int,
                sentences: int, decode_cfg: DecodeConfig) -> dict:
    """Peak resident memory (MB) of a fresh process that loads the model and translates.

    One process per measurement, since a process's peak never goes down: `baseline_mb` is
    Python + TensorFlow imported, `peak_mb` the high-water mark after translating, and
    `model_and_decoding_mb` their difference.
    """
    import dataclasses
    import json
    import os
    import subprocess
    import sys

    args = {"model": str(model_dir), "src": str(src), "beam": beam, "batch_size": batch_size,
            "sentences": sentences, "decode": dataclasses.asdict(decode_cfg)}
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, json.dumps(args)],
                          capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode:
        raise RuntimeError(f"memory probe for {model_dir} failed:\n{proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out = {k: round(v, 1) for k, v in out.items()}
    out["model_and_decoding_mb"] = round(out["peak_mb"] - out["baseline_mb"], 1)
    return out
