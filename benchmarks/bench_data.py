"""Time the data stages on a prepared run: prepare + tokenizer training, and tf.data batches.

    python benchmarks/bench_data.py --config configs/multi30k_en_de.yaml --run-dir runs/bench_data

Prints one JSON object: seconds for prepare and for SentencePiece training, and the input
pipeline's throughput (batches/s, target tokens/s) over one full epoch of token-budget
batches, read through `tf.data` exactly as training reads them.
"""

from __future__ import annotations

import argparse
import json
import time

from nmt_kd.config import load_config
from nmt_kd.data.prepare import prepare_data
from nmt_kd.dataset import BatchStream, encode_pairs
from nmt_kd.fileio import read_lines
from nmt_kd.tokenizer import Tokenizer, build_vocab


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    cfg = load_config(args.config, args.overrides)
    quiet = lambda _m: None  # noqa: E731

    t0 = time.perf_counter()
    manifest = prepare_data(cfg, args.run_dir, log=quiet)
    t1 = time.perf_counter()
    build_vocab(cfg.vocab, args.run_dir, log=quiet)
    t2 = time.perf_counter()

    tok = Tokenizer(f"{args.run_dir}/vocab/spm.model")
    src, tgt = read_lines(f"{args.run_dir}/data/train.src"), read_lines(f"{args.run_dir}/data/train.tgt")
    t3 = time.perf_counter()
    pairs = encode_pairs(tok, src, tgt, cfg.train.max_len)
    t4 = time.perf_counter()
    stream = BatchStream(pairs, cfg.train.max_tokens, seed=cfg.train.seed)
    batches = tokens = padded = 0
    t5 = time.perf_counter()
    for (s, tin), tout in stream.dataset(epoch=0):
        batches += 1
        tokens += int((tout.numpy() != 0).sum())
        padded += int(tout.shape[0] * max(s.shape[1], tin.shape[1]))
    t6 = time.perf_counter()
    print(json.dumps({
        "train_pairs": manifest["counts"]["train"],
        "prepare_seconds": round(t1 - t0, 2),
        "tokenizer_train_seconds": round(t2 - t1, 2),
        "encode_seconds": round(t4 - t3, 2),
        "epoch_batches": batches,
        "batches_per_second": round(batches / (t6 - t5), 1),
        "target_tokens_per_second": round(tokens / (t6 - t5)),
        "padding_efficiency": round(tokens / max(padded, 1), 3),
        "max_tokens": cfg.train.max_tokens,
    }, indent=2))


if __name__ == "__main__":
    main()
