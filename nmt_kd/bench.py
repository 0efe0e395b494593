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
from nmt_kd.cpuload import BUSY_SHARE, OtherLoad
from nmt_kd.models.registry import param_split


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
        loaded.append((str(d), tr, meta, tr.params()))
    rows = []
    for beam in beams:
        # a backend that cannot decode with this beam (TFLite: greedy only; a SavedModel: its
        # export's beam only) sits out these rows
        translators = [t for t in loaded if _decodes_with(t[1], beam)]
        for bs in batch_sizes:
            lines = src_lines[:batch1_sentences] if bs == 1 else src_lines
            times: list[list[float]] = [[] for _ in translators]
            # warm-up: traces every length bucket, and counts the output tokens
            tokens = [sum(tr.translate(lines, beam=beam, batch_size=bs).token_counts)
                      for _, tr, _, _ in translators]
            with OtherLoad() as load:
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
                       "tokens_per_second": round(statistics.median(tps), 1), "repeats": repeats,
                       # other processes' share of the CPU during these interleaved repeats
                       "cpu_other_share": load.share}
                rows.append(row)
                log(f"{Path(d).name:>24} beam {beam} batch {bs:>3}: {row['sentences_per_second']:8.1f} sent/s "
                    f"(min {row['sentences_per_second_min']:.1f}, max {row['sentences_per_second_max']:.1f}), "
                    f"{row['tokens_per_second']:9.0f} tok/s")
            if load.share is not None and load.share > BUSY_SHARE:
                log(f"bench: other processes used {100 * load.share:.0f}% of the CPU while beam {beam} "
                    f"batch {bs} was timed: not an idle-machine figure")
    return {"machine": machine_info(), "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": rows}


def _decodes_with(translator, beam: int) -> bool:
    from nmt_kd.errors import UserError

    try:
        translator.backend.check(beam, 1)
    except UserError:
        return False
    return True


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

def high_water_kb():
    # VmHWM belongs to this process's own address space, so it starts afresh at exec;
    # ru_maxrss does not on Linux (it keeps the forking parent's peak).
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

args = json.loads(sys.argv[1])
cfg = config_from_dict({"decode": args["decode"]}).decode
import tensorflow  # noqa: F401  (the baseline includes the framework itself)
base = high_water_kb()
tr, _, _ = open_translator(args["model"], cfg)
loaded = high_water_kb()
tr.translate(read_input_lines(args["src"])[: args["sentences"]], beam=args["beam"],
             batch_size=args["batch_size"])
peak = high_water_kb()
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


# -- training throughput --------------------------------------------------------------------

# Assumed peak of this kind of CPU (state it with every fraction): AMD Zen 4 has two 256-bit
# FMA pipes per core (AVX-512 runs as two halves): 2 x 8 fp32 lanes x 2 flops = 32 fp32
# flops/cycle; VDPBF16PS does two bf16 products per fp32 lane, so 64 bf16 flops/cycle.
PEAK_FLOPS_PER_CYCLE = {"fp32": 32, "bf16": 64}


def cpu_peak_flops(precision: str, cores: int | None = None, ghz: float | None = None) -> dict:
    """The assumed peak flop/s: cores x clock (the nominal MHz in /proc/cpuinfo) x flops/cycle."""
    import os

    cores = cores or os.cpu_count() or 1
    if ghz is None:
        from nmt_kd.fileio import cpuinfo

        ghz = float(cpuinfo("cpu MHz") or 0.0) / 1000
    per_cycle = PEAK_FLOPS_PER_CYCLE.get(precision, PEAK_FLOPS_PER_CYCLE["fp32"])
    return {"cores": cores, "ghz": round(ghz, 3), "flops_per_cycle": per_cycle,
            "peak_gflops": round(cores * ghz * per_cycle, 1)}


def train_flops(split: dict, src_tokens: int, tgt_tokens: int) -> float:
    """~6 flops per parameter per token it touches (2 forward, 4 backward): every encoder
    parameter once per source token, every decoder parameter once per target token.
    Attention over the sequence (O(length) per token) is left out: for Multi30k's ~13-token
    sentences it is a few percent of the total."""
    return 6.0 * (split["encoder"] * src_tokens + split["decoder"] * tgt_tokens)


def bench_training(model_dirs: list[str | Path], run_dir: str | Path, cfg, steps: int = 20,
                   warmup: int = 3, repeats: int = 3, log: Callable[[str], None] = print) -> dict:
    """Training throughput of each Keras model in `model_dirs` on the same batches.

    Each model is loaded (its weights and dtype policy as trained) with a fresh optimizer from
    its training section, warmed up on `warmup` batches (tracing), then timed over the same
    `steps` batches of RUN/data/train.* `repeats` times, interleaved across models. The loss
    is the gold label-smoothed cross-entropy (seq-KD trains exactly so; offline word-KD adds
    a top-k lookup). Reports target tokens/s and the estimated share of the CPU's peak.
    """
    import numpy as np

    from nmt_kd.dataset import BatchStream, encode_pairs
    from nmt_kd.train import load_pairs

    run_dir = Path(run_dir)
    src, tgt = load_pairs(run_dir, "train")
    entries = _training_entries(model_dirs, cfg, log)
    if not entries:
        return {"rows": []}
    pairs = encode_pairs(entries[0]["tok"], src, tgt, max(e["tc"].max_len for e in entries))
    max_tokens = min(e["tc"].max_tokens for e in entries)
    stream = BatchStream(pairs, max_tokens, seed=1)
    batches = [b for _, b in zip(range(warmup + steps), stream.iter_numpy(0), strict=False)]
    if len(batches) < warmup + steps:
        raise ValueError(f"{run_dir}/data/train.*: only {len(batches)} batches, asked for {warmup + steps}")
    timed = batches[warmup:]
    src_tokens = int(sum(np.count_nonzero(s) for (s, _), _ in timed))
    tgt_tokens = int(sum(np.count_nonzero(t) for _, t in timed))
    for e in entries:  # warm-up: traces every batch shape the timed steps will see
        for (s, ti), to in batches:
            e["step"](s, ti, to)
    times: list[list[float]] = [[] for _ in entries]
    for _ in range(repeats):
        for i, e in enumerate(entries):
            t0 = time.perf_counter()
            for (s, ti), to in timed:
                loss, _, _ = e["step"](s, ti, to)
            float(loss)  # wait for the last step
            times[i].append(time.perf_counter() - t0)
    rows = [_training_row(e, times[i], steps, max_tokens, src_tokens, tgt_tokens, repeats, log)
            for i, e in enumerate(entries)]
    return {"run_dir": str(run_dir), "rows": rows}


def _training_entries(model_dirs: list[str | Path], cfg, log: Callable[[str], None]) -> list[dict]:
    """A model, its tokenizer and a compiled train step for each trainable model directory
    (exports and ensembles are skipped, and models whose tokenizer differs from the first)."""
    from nmt_kd.ct2 import is_ct2_dir
    from nmt_kd.losses import label_smoothed_ce
    from nmt_kd.models.ensemble import is_ensemble_dir
    from nmt_kd.models.persistence import load_model_dir
    from nmt_kd.models.registry import architecture_of
    from nmt_kd.savedmodel_translate import is_savedmodel_dir
    from nmt_kd.tflite_translate import is_tflite_dir
    from nmt_kd.train import make_optimizer, make_train_step, train_section

    entries, tokenizer_sha = [], None
    for d in model_dirs:
        if is_tflite_dir(d) or is_savedmodel_dir(d) or is_ct2_dir(d) or is_ensemble_dir(d):
            continue  # inference only: an export, or an ensemble of frozen models
        model, tok, meta = load_model_dir(d)
        entry = architecture_of(meta, model)
        arch = meta.get("model_type") or (entry.name if entry else "teacher")
        sha = meta.get("tokenizer_sha256")
        if tokenizer_sha and sha and sha != tokenizer_sha:
            log(f"bench training: {d} uses another tokenizer than {entries[0]['model']}; skipped")
            continue
        tokenizer_sha = tokenizer_sha or sha
        tc = train_section(cfg, arch)
        optimizer = make_optimizer(tc)
        optimizer.build(model.trainable_variables)
        eps = tc.label_smoothing
        step = make_train_step(model, optimizer,
                               lambda logits, tgt_out, s, t, eps=eps: label_smoothed_ce(logits, tgt_out, eps))
        entries.append({"model": str(d), "arch": arch, "tok": tok, "step": step, "tc": tc,
                        "precision": meta.get("precision") or tc.precision,
                        "params": int(model.count_params()),
                        "split": entry.split_params(model) if entry else param_split(model)})
    return entries


def _training_row(e: dict, times: list[float], steps: int, max_tokens: int, src_tokens: int,
                  tgt_tokens: int, repeats: int, log: Callable[[str], None]) -> dict:
    """One model's row of `bench_training` from its timed repeats (logged as well)."""
    tps = [tgt_tokens / t for t in times]
    sec = statistics.median(times)
    flops = train_flops(e["split"], src_tokens, tgt_tokens)
    peak = cpu_peak_flops(e["precision"])
    achieved = flops / sec / 1e9
    row = {"model": e["model"], "model_type": e["arch"], "params": e["params"],
           "precision": e["precision"], "steps": steps, "max_tokens": max_tokens,
           "src_tokens": src_tokens, "tgt_tokens": tgt_tokens,
           "steps_per_second": round(steps / sec, 3),
           "tgt_tokens_per_second": round(statistics.median(tps), 1),
           "tgt_tokens_per_second_min": round(min(tps), 1),
           "tgt_tokens_per_second_max": round(max(tps), 1),
           "param_split": e["split"], "est_gflops_per_step": round(flops / steps / 1e9, 2),
           "achieved_gflops": round(achieved, 1), "assumed_peak": peak,
           "peak_fraction": round(achieved / peak["peak_gflops"], 4) if peak["peak_gflops"] else None,
           "repeats": repeats}
    log(f"{Path(e['model']).name:>24} train ({e['precision']}): {row['tgt_tokens_per_second']:8.0f} "
        f"tgt tok/s (min {row['tgt_tokens_per_second_min']:.0f}, max "
        f"{row['tgt_tokens_per_second_max']:.0f}), {row['steps_per_second']:.2f} steps/s, "
        f"~{achieved:.1f} GFLOP/s = {100 * (row['peak_fraction'] or 0):.1f}% of the assumed "
        f"{peak['peak_gflops']:.0f} GFLOP/s peak")
    return row
