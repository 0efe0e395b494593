"""Training throughput of one architecture in several precisions, side by side in one run.

    python benchmarks/bench_train.py --config configs/multi30k_en_de.yaml \
        --run-dir runs/multi30k_en_de --model teacher --precisions fp32 bf16 --steps 40

Each precision gets a freshly built model and the same batches (the first epoch's order);
after `--warmup` untimed steps, `--steps` updates are timed. Prints JSON: target tokens/s and
steps/s per precision, and each one's ratio to the first. `--section student_train` takes the
batch size and optimizer of the students' training section instead of the teacher's.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import keras

from nmt_kd.config import load_config
from nmt_kd.dataset import BatchStream, encode_pairs
from nmt_kd.fileio import read_lines
from nmt_kd.losses import label_smoothed_ce
from nmt_kd.models.registry import build_model
from nmt_kd.tokenizer import Tokenizer
from nmt_kd.train import make_optimizer, make_train_step, set_precision


def measure(cfg, arch, tok, stream, precision, warmup, steps, section: str = "train") -> dict:
    tc = getattr(cfg, section)
    set_precision(precision)
    keras.utils.set_random_seed(1)
    model = build_model(arch, cfg.model, tok.vocab_size)
    optimizer = make_optimizer(replace(tc, precision=precision))
    optimizer.build(model.trainable_variables)
    eps = tc.label_smoothing
    step = make_train_step(model, optimizer, lambda lg, y, s, t: label_smoothed_ce(lg, y, eps),
                           loss_scaling=precision == "fp16")
    batches = stream.iter_numpy(0)
    for _ in range(warmup):
        (s, ti), to = next(batches)
        step(s, ti, to)
    tokens = 0.0
    t0 = time.perf_counter()
    for _ in range(steps):
        (s, ti), to = next(batches)
        loss, n, _ = step(s, ti, to)
        tokens += float(n)
    dt = time.perf_counter() - t0
    set_precision("fp32")
    return {"precision": precision, "params": int(model.count_params()), "steps": steps,
            "seconds": round(dt, 2), "target_tokens_per_second": round(tokens / dt),
            "steps_per_second": round(steps / dt, 3), "last_loss": round(float(loss), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--model", default="teacher")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--section", choices=("train", "student_train"), default="train",
                    help="the training section whose batch size and optimizer to use")
    args = ap.parse_args()
    cfg = load_config(args.config, args.overrides)
    tc = getattr(cfg, args.section)
    tok = Tokenizer(f"{args.run_dir}/vocab/spm.model")
    pairs = encode_pairs(tok, read_lines(f"{args.run_dir}/data/train.src"),
                         read_lines(f"{args.run_dir}/data/train.tgt"), tc.max_len)
    stream = BatchStream(pairs, tc.max_tokens, seed=tc.seed)
    rows = [measure(cfg, args.model, tok, stream, p, args.warmup, args.steps, args.section)
            for p in args.precisions]
    for r in rows:
        r["ratio_to_first"] = round(r["target_tokens_per_second"] / rows[0]["target_tokens_per_second"], 2)
    print(json.dumps({"model": args.model, "section": args.section, "max_tokens": tc.max_tokens,
                      "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
