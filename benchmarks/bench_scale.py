"""The training input path and the prepare stage at scale: synthetic scale-ups of Multi30k,
cleaned and split by `nmt-kd prepare`'s code, encoded into memory-mapped token shards and
read through tf.data exactly as training reads them.

    python benchmarks/bench_scale.py --sizes 100000 1000000 --old-at 100000 \\
        --work /tmp/bench_scale --out docs/bench/scale.json

The corpus of N pairs is Multi30k's train split repeated: copy 0 is the original, every
later copy c applies seeded word-order noise to each sentence (Random(c): len // 4 + 1
swaps of two adjacent words, source and target independently), written line by line.
SentencePiece (8k unigram, as configs/multi30k_en_de.yaml) is trained once on the original.
Each measurement runs in its own child process whose RssAnon (/proc/PID/status) the parent
samples every 50 ms: `encode` (text -> shards, `encode_corpus`) and `input` (the epoch plan
and the tf.data batches of <= max_tokens tokens: `ShardStream.dataset`, what train.py
iterates). `--old-at N` also measures today's path at N pairs (`read_lines` +
`encode_pairs`, then `BatchStream.iter_indexed` as training read it before the shards).

`prepare` (`prepare_data`, timed without the imports) runs the default data section on the
same corpus (valid and test, 1,000 pairs each, cut from it after de-duplication, the length
and overlap filters) with data.max_train_pairs at half the pairs, so that every pass of the
stage runs, into a fresh run directory. `--parts` picks what to measure (`encode`: encode and
input, `prepare`); the figures are merged into `--out`: sizes not measured keep theirs, and a
measured size keeps the keys this run did not measure.

`--loss-steps S` also trains a tiny teacher (d_model 64, 2+2 layers, fp32, dropout 0.1) on
the real Multi30k for S steps from the same seed through both paths (`train_model`'s
`input_path`: `memory` and `shards`) and records both loss curves and their largest gap.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MULTI30K = REPO.parent / "shared" / "data" / "multi30k"  # --multi30k for another checkout


def noisy(line: str, rng: random.Random) -> str:
    words = line.split()
    for _ in range(len(words) // 4 + 1):
        if len(words) > 1:
            i = rng.randrange(len(words) - 1)
            words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def synth_corpus(n: int, out: Path, multi30k: Path) -> tuple[Path, Path]:
    """N pairs of Multi30k train with word-order noise (see the module docstring)."""
    src, tgt = out / "train.src", out / "train.tgt"
    if src.is_file() and tgt.is_file():
        return src, tgt
    base = [(multi30k / f"train.{lang}").read_text(encoding="utf-8").splitlines()
            for lang in ("en", "de")]
    out.mkdir(parents=True, exist_ok=True)
    tmp = [Path(f"{p}.tmp") for p in (src, tgt)]
    with open(tmp[0], "w", encoding="utf-8") as fs, open(tmp[1], "w", encoding="utf-8") as ft:
        for c in range((n + len(base[0]) - 1) // len(base[0])):
            rng = random.Random(c)
            take = min(len(base[0]), n - c * len(base[0]))
            for s, t in zip(base[0][:take], base[1][:take], strict=True):
                fs.write((noisy(s, rng) if c else s) + "\n")
                ft.write((noisy(t, rng) if c else t) + "\n")
    for a, b in zip(tmp, (src, tgt), strict=True):
        os.replace(a, b)
    return src, tgt


def child_encode(args) -> dict:
    from nmt_kd.shards import encode_corpus
    from nmt_kd.tokenizer import Tokenizer

    t0 = time.perf_counter()
    pairs = encode_corpus(Tokenizer(args.spm), args.src, args.tgt, args.max_len, args.root,
                          "train")
    return {"encode_seconds": round(time.perf_counter() - t0, 2), "pairs": len(pairs),
            "dropped_too_long": pairs.dropped_too_long, "shard_dir": str(pairs.dir),
            "shard_mb": round(sum(p.stat().st_size for p in pairs.dir.iterdir()) / 2**20, 1)}


def child_input(args) -> dict:
    import tensorflow as tf  # noqa: F401  (imported before timing, as in training)

    from nmt_kd.shards import ShardedPairs, ShardStream

    pairs = ShardedPairs(args.shard_dir)
    t0 = time.perf_counter()
    stream = ShardStream(pairs, args.max_tokens, seed=1)
    n_batches = stream.num_batches(0)
    t1 = time.perf_counter()
    tgt_len = pairs.tgt_lengths
    tokens = batches = 0
    for idx, _src, _tin, _tout in stream.dataset(epoch=0):
        tokens += int(tgt_len[idx.numpy()].sum())
        batches += 1
        if batches == args.max_batches:
            break
    t2 = time.perf_counter()
    return {"plan_seconds": round(t1 - t0, 2), "epoch_batches": n_batches,
            "measured_batches": batches,
            "input_target_tokens_per_second": round(tokens / (t2 - t1))}


def child_old(args) -> dict:
    import tensorflow as tf  # noqa: F401  (imported, as in training)

    from nmt_kd.dataset import BatchStream, encode_pairs
    from nmt_kd.fileio import read_lines
    from nmt_kd.tokenizer import Tokenizer

    t0 = time.perf_counter()
    pairs = encode_pairs(Tokenizer(args.spm), read_lines(args.src), read_lines(args.tgt),
                         args.max_len)
    t1 = time.perf_counter()
    stream = BatchStream(pairs, args.max_tokens, seed=1)
    tgt_len = pairs.tgt_lengths
    tokens = batches = 0
    for idx, _batch in stream.iter_indexed(0):
        tokens += int(tgt_len[idx].sum())
        batches += 1
        if batches == args.max_batches:
            break
    t2 = time.perf_counter()
    return {"encode_seconds": round(t1 - t0, 2), "pairs": len(pairs),
            "input_target_tokens_per_second": round(tokens / (t2 - t1))}


def child_prepare(args) -> dict:
    from nmt_kd.config import config_from_dict
    from nmt_kd.data.prepare import prepare_data

    cfg = config_from_dict({"data": {"train_src": args.src, "train_tgt": args.tgt,
                                     "max_train_pairs": args.max_train_pairs}})
    t0 = time.perf_counter()
    m = prepare_data(cfg, args.root, log=lambda _m: None)
    return {"prepare_seconds": round(time.perf_counter() - t0, 2), "counts": m["counts"],
            "removed": m["removed_from_train"]}


def run_child(mode: str, **kw) -> dict:
    """Run `mode` in a child process, sampling its RssAnon every 50 ms."""
    cmd = [sys.executable, __file__, "--child", mode] + [
        a for k, v in kw.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, CUDA_VISIBLE_DEVICES="-1"))
    peak = [0]

    def sample():
        while proc.poll() is None:
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
                kb = int(status.split("RssAnon:")[1].split()[0])
                peak[0] = max(peak[0], kb)
            except (FileNotFoundError, IndexError, ProcessLookupError):
                pass
            time.sleep(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, _ = proc.communicate()
    thread.join()
    if proc.returncode:
        raise SystemExit(f"child {mode} failed ({proc.returncode})")
    return {**json.loads(out.strip().splitlines()[-1]), "peak_anon_mb": round(peak[0] / 1024, 1)}


def tokenizer(work: Path, multi30k: Path) -> Path:
    from nmt_kd.config import VocabConfig
    from nmt_kd.tokenizer import train_tokenizer

    spm = work / "vocab" / "spm.model"
    if not spm.is_file():
        train_tokenizer(VocabConfig(size=8000), multi30k / "train.en", multi30k / "train.de",
                        work / "vocab")
    return spm


def measure(n: int, args, old: bool) -> dict:
    src, tgt = synth_corpus(n, args.work / str(n), args.multi30k)
    row = {"text_mb": round((src.stat().st_size + tgt.stat().st_size) / 2**20, 1)}
    if "prepare" in args.parts:
        root = args.work / str(n) / "prepared"
        shutil.rmtree(root, ignore_errors=True)  # a fresh run directory
        p = run_child("prepare", src=src, tgt=tgt, root=root, max_train_pairs=n // 2)
        row |= {"prepare_seconds": p["prepare_seconds"], "prepare_peak_anon_mb": p["peak_anon_mb"],
                "prepare_counts": p["counts"], "prepare_removed": p["removed"],
                "prepare_load_average": round(os.getloadavg()[0], 1)}
        shutil.rmtree(root)
    if "encode" in args.parts:
        row |= measure_encode(n, args, src, tgt, old)
    print(json.dumps({n: row}), file=sys.stderr, flush=True)
    return row


def measure_encode(n: int, args, src: Path, tgt: Path, old: bool) -> dict:
    common = {"spm": tokenizer(args.work, args.multi30k), "src": src, "tgt": tgt,
              "max_len": args.max_len, "max_tokens": args.max_tokens,
              "max_batches": args.max_batches}
    shutil.rmtree(args.work / str(n) / "encoded", ignore_errors=True)  # encode afresh
    enc = run_child("encode", root=args.work / str(n) / "encoded", **common)
    inp = run_child("input", shard_dir=enc["shard_dir"], **common)
    row = {"pairs": enc["pairs"],
           "encode_seconds": enc["encode_seconds"], "encode_peak_anon_mb": enc["peak_anon_mb"],
           "shard_mb": enc["shard_mb"], "input_peak_anon_mb": inp["peak_anon_mb"],
           "input_target_tokens_per_second": inp["input_target_tokens_per_second"],
           "plan_seconds": inp["plan_seconds"], "epoch_batches": inp["epoch_batches"],
           "measured_batches": inp["measured_batches"]}
    if old:
        o = run_child("old", **common)
        row["old_path"] = {"encode_seconds": o["encode_seconds"], "peak_anon_mb": o["peak_anon_mb"],
                           "input_target_tokens_per_second": o["input_target_tokens_per_second"]}
    return row


def merged(out: Path, result: dict) -> dict:
    """`result` merged into the figures already in `out` (see the module docstring)."""
    before = json.loads(out.read_text()) if out.is_file() else {}
    sizes = before.get("sizes", {})
    for n, row in result.pop("sizes").items():
        sizes[n] = {**sizes.get(n, {}), **row}
    return {**before, **result, "sizes": sizes}


def loss_curves(steps: int, work: Path) -> dict:
    """The first `steps` training losses through the old and the new input path."""
    from nmt_kd.config import load_config
    from nmt_kd.data.prepare import prepare_data
    from nmt_kd.tokenizer import build_vocab
    from nmt_kd.train import train_model

    tiny = ["model.teacher.d_model=64", "model.teacher.encoder_layers=2",
            "model.teacher.decoder_layers=2", "model.teacher.ff_dim=256",
            "model.teacher.dropout=0.1", "train.precision=fp32", f"train.max_steps={steps}",
            "train.eval_every=0", "train.checkpoint_every=0", "train.log_every=1000000"]
    cfg = load_config(REPO / "configs" / "multi30k_en_de.yaml", tiny)
    run = work / "multi30k_run"
    if not (run / "vocab" / "spm.model").is_file():
        prepare_data(cfg, run, log=lambda _m: None)
        build_vocab(cfg.vocab, run, log=lambda _m: None)
    curves = {}
    for path in ("memory", "shards"):
        t0 = time.perf_counter()
        r = train_model(cfg, run, "teacher", name=f"curve_{path}_{time.time_ns()}",
                        log=lambda _m: None, input_path=path)
        curves[path] = {"seconds": round(time.perf_counter() - t0, 1),
                        "losses": [round(x, 5) for x in r.losses]}
    gap = max(abs(a - b) for a, b in zip(curves["memory"]["losses"], curves["shards"]["losses"],
                                         strict=True))
    return {"steps": steps, "config": "configs/multi30k_en_de.yaml with " + ", ".join(tiny),
            "max_abs_loss_difference": gap, **curves}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", choices=("encode", "input", "old", "prepare"))
    ap.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    ap.add_argument("--parts", nargs="+", choices=("encode", "prepare"),
                    default=["encode", "prepare"])
    ap.add_argument("--multi30k", type=Path, default=MULTI30K)
    ap.add_argument("--old-at", type=int, nargs="*", default=[100_000])
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_scale"))
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "bench" / "scale.json")
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=4096)
    ap.add_argument("--max-batches", type=int, default=0, help="0: the whole epoch")
    ap.add_argument("--loss-steps", type=int, default=0)
    for k in ("spm", "src", "tgt", "root", "shard-dir"):
        ap.add_argument(f"--{k}")
    ap.add_argument("--max-train-pairs", type=int)
    args = ap.parse_args()
    if args.child:
        fn = {"encode": child_encode, "input": child_input, "old": child_old,
              "prepare": child_prepare}[args.child]
        print(json.dumps(fn(args)))
        return
    from nmt_kd.fileio import cpuinfo

    rows = {str(n): measure(n, args, n in args.old_at) for n in args.sizes}
    machine = f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at the end"
    result = {"sizes": rows}
    if "encode" in args.parts:
        result |= {"machine": machine, "max_tokens": args.max_tokens, "max_len": args.max_len,
                   "max_batches": args.max_batches or "whole epoch"}
    if "prepare" in args.parts:
        result["prepare"] = {  # the load of each size's run is in its row
            "machine": f"{cpuinfo('model name')}, {os.cpu_count()} CPU cores",
            "config": "the default data section; data.max_train_pairs: half the pairs"}
    if args.loss_steps:
        result["loss_curves"] = loss_curves(args.loss_steps, args.work)
    result = merged(args.out, result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
