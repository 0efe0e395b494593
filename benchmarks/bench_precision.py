"""Decoding speed and BLEU of the same model in fp32 and in bf16, interleaved in one process.

    python benchmarks/bench_precision.py runs/multi30k_en_de/teacher 5 runs/multi30k_en_de/rnn_seq 1 \
        --src runs/multi30k_en_de/data/test.src --ref runs/multi30k_en_de/data/test.tgt

Pairs of (model directory, beam); batch 64; a warm-up pass, then `--repeats` timed passes
alternating fp32 and bf16; prints the median sentences/s, the ratio and the BLEU of each.
"""

import argparse
import json
import statistics
import time

import sacrebleu

from nmt_kd.config import load_config
from nmt_kd.models.persistence import load_model_dir
from nmt_kd.translate import Translator, read_input_lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("pairs", nargs="+", help="MODEL_DIR BEAM [MODEL_DIR BEAM ...]")
    ap.add_argument("--src", required=True)
    ap.add_argument("--ref", required=True)
    ap.add_argument("--config", default="configs/multi30k_en_de.yaml")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out")
    args = ap.parse_args()
    cfg = load_config(args.config).decode
    src, ref = read_input_lines(args.src), read_input_lines(args.ref, clean=False)
    rows = []
    for model_dir, beam in zip(args.pairs[::2], map(int, args.pairs[1::2]), strict=True):
        trs = {}
        for precision in ("fp32", "bf16"):
            model, tok, _ = load_model_dir(model_dir, precision)
            trs[precision] = Translator(model, tok, cfg)
        bleu = {p: sacrebleu.corpus_bleu(tr.translate(src, beam=beam, batch_size=64).hypotheses, [ref]).score
                for p, tr in trs.items()}
        times = {p: [] for p in trs}
        for _ in range(args.repeats):
            for p, tr in trs.items():
                t0 = time.perf_counter()
                tr.translate(src, beam=beam, batch_size=64)
                times[p].append(time.perf_counter() - t0)
        sps = {p: statistics.median(len(src) / t for t in ts) for p, ts in times.items()}
        row = {"model": model_dir, "beam": beam, "batch_size": 64,
               "fp32_sent_per_s": round(sps["fp32"], 1), "bf16_sent_per_s": round(sps["bf16"], 1),
               "bf16_over_fp32": round(sps["bf16"] / sps["fp32"], 2),
               "fp32_bleu": round(bleu["fp32"], 2), "bf16_bleu": round(bleu["bf16"], 2)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
