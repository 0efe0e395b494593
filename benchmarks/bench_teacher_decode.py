"""Teacher decoding: our TensorFlow search (before) against its CTranslate2 export (after).

    python benchmarks/bench_teacher_decode.py --model-dir /tmp/teacher \\
        --src RUN/data/test.src --ref RUN/data/test.tgt --out docs/bench/teacher_decode.json

One process, one run: the Keras teacher (TensorFlow limited to `--threads` intra-op
threads) and its CTranslate2 export (made here unless `--ct2-dir` is given; intra_threads
`--threads`, compute type default and int8) translate the whole test set at batch 64 with
beam 5 and greedy through the same `Translator.translate` (tokenization, length sorting,
batching). A first, untimed pass per engine and mode gives the BLEU and warms up (traces);
then `--repeats` timed passes, the engines interleaved within each repeat so that a busy
machine slows them alike; the median pass counts. On a shared machine only the ratios of
this one run mean anything; the load average is recorded before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", required=True, help="Keras teacher model directory")
    ap.add_argument("--ct2-dir", help="its CTranslate2 export (default: exported to a temp dir)")
    ap.add_argument("--src", required=True)
    ap.add_argument("--ref", required=True)
    ap.add_argument("--test-set", default="multi30k/test_2016_flickr")
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-int8", action="store_true", help="skip the int8 compute type")
    args = ap.parse_args()

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    import ctranslate2

    from nmt_kd.config import DecodeConfig
    from nmt_kd.ct2 import CT2Backend, export_ctranslate2
    from nmt_kd.evaluate import machine_info, score
    from nmt_kd.fileio import write_json
    from nmt_kd.models.persistence import load_model_dir
    from nmt_kd.translate import Translator, read_input_lines

    load_before = os.getloadavg()
    cfg = DecodeConfig(batch_size=args.batch_size)
    src = read_input_lines(args.src)
    refs = read_input_lines(args.ref, clean=False)
    ct2_dir = Path(args.ct2_dir) if args.ct2_dir else Path(tempfile.mkdtemp()) / "ct2"
    if not args.ct2_dir:
        export_ctranslate2(args.model_dir, ct2_dir)
    model, tok, meta = load_model_dir(args.model_dir, "fp32")
    engines = {"before": Translator(model, tok, cfg),
               "after": Translator.from_backend(CT2Backend(ct2_dir, cfg, compute_type="default",
                                                           intra_threads=args.threads))}
    if not args.no_int8:
        engines["after_int8"] = Translator.from_backend(
            CT2Backend(ct2_dir, cfg, compute_type="int8", intra_threads=args.threads))
    modes = {"beam5": 5, "greedy": 1}

    hyps: dict[str, dict[str, list[str]]] = {e: {} for e in engines}
    for mode, beam in modes.items():
        for name, tr in engines.items():
            res = tr.translate(src, beam=beam, batch_size=args.batch_size)
            hyps[name][mode] = res.hypotheses
            print(f"{name:>10} {mode}: first pass {res.seconds:.1f}s", flush=True)
    times: dict[str, dict[str, list[float]]] = {e: {m: [] for m in modes} for e in engines}
    for r in range(args.repeats):
        for mode, beam in modes.items():
            for name, tr in engines.items():
                sec = tr.translate(src, beam=beam, batch_size=args.batch_size).seconds
                times[name][mode].append(round(sec, 3))
                print(f"repeat {r}: {name:>10} {mode}: {len(src) / sec:.1f} sent/s", flush=True)
    load_after = os.getloadavg()

    result: dict = {
        "what": "Transformer teacher decoding, TensorFlow search (before) vs CTranslate2 (after), "
                f"{len(src)} sentences of {args.test_set}, batch {args.batch_size}, one process",
        "model_dir": str(args.model_dir),
        "model": {k: meta.get(k) for k in ("model_type", "kd", "name", "final_weights", "params")},
        "test_set": args.test_set,
        "sentences": len(src),
        "threads": args.threads,
        "repeats": args.repeats,
        "timing": "median of the timed passes (a first untimed pass warms up and gives BLEU); "
                  "the engines are interleaved within each repeat",
        "decode": {"length_penalty": cfg.length_penalty, "max_len_a": cfg.max_len_a,
                   "max_len_b": cfg.max_len_b, "max_len_cap": cfg.max_len_cap},
    }
    for name in engines:
        entry = {}
        for mode in modes:
            med = statistics.median(times[name][mode])
            entry[f"{mode}_bs{args.batch_size}_sent_s"] = round(len(src) / med, 2)
        entry["bleu_beam5"] = score(hyps[name]["beam5"], refs)["bleu"]
        entry["bleu_greedy"] = score(hyps[name]["greedy"], refs)["bleu"]
        entry["seconds"] = times[name]
        if name != "before":
            entry["compute_type"] = engines[name].backend.compute_type
            for mode in modes:
                same = sum(a == b for a, b in zip(hyps["before"][mode], hyps[name][mode], strict=True))
                entry[f"identical_to_before_{mode}"] = round(same / len(src), 4)
        result[name] = entry
    bs = args.batch_size
    result["ratios"] = {
        name: {"beam5": round(result[name][f"beam5_bs{bs}_sent_s"] / result["before"][f"beam5_bs{bs}_sent_s"], 2),
               "greedy": round(result[name][f"greedy_bs{bs}_sent_s"] / result["before"][f"greedy_bs{bs}_sent_s"], 2),
               "bleu_beam5_delta": round(result[name]["bleu_beam5"] - result["before"]["bleu_beam5"], 2)}
        for name in engines if name != "before"
    }
    result["bleu_signature"] = score(hyps["before"]["beam5"], refs)["bleu_signature"]
    result["load_average"] = {"before": [round(x, 2) for x in load_before],
                              "after": [round(x, 2) for x in load_after]}
    result["machine"] = dict(machine_info(), ctranslate2=ctranslate2.__version__)
    result["date"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    write_json(args.out, result)
    print(f"wrote {args.out}: ratios {result['ratios']}")


if __name__ == "__main__":
    main()
