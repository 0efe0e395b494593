"""Sequence-level distillation speed: the TensorFlow search against `distill.engine:
ctranslate2` (the same Keras teacher converted to CTranslate2 in a scratch directory, the
conversion timed too), on the same training sources, in one process, engines alternated.

    python benchmarks/bench_distill_engine.py --data RUN/data --teacher RUN/teacher \\
        --config RUN/teacher/config.yaml --out docs/bench/distill_engine.json [--lines 4000]

Each engine translates the sources into its own scratch run directory with `translate_shards`
(beam 5, batch 64, shards of 2,000 lines); the JSON gives seconds and sentences/s per run and
the share of lines the two engines translate identically.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nmt_kd.config import config_from_dict, config_to_dict, load_config  # noqa: E402
from nmt_kd.distill import shard_path, translate_shards  # noqa: E402
from nmt_kd.fileio import read_lines, write_json, write_lines  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="a prepared run's data/ (train.src, train.tgt)")
    ap.add_argument("--teacher", required=True, help="the Keras teacher's model directory")
    ap.add_argument("--config", required=True, help="the config whose distill/decode sections apply")
    ap.add_argument("--out", required=True)
    ap.add_argument("--lines", type=int, default=0, help="the first N training sources (0: all)")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()

    src = read_lines(Path(args.data) / "train.src")
    tgt = read_lines(Path(args.data) / "train.tgt")
    if args.lines:
        src, tgt = src[:args.lines], tgt[:args.lines]
    tree = config_to_dict(load_config(args.config))
    out = {"what": __doc__.split("\n\n")[0].replace("\n", " "), "teacher": args.teacher,
           "sentences": len(src), "beam": 5, "batch_size": 64, "runs": []}
    hyps: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(args.repeats):
            for engine in ("tensorflow", "ctranslate2"):
                run = Path(scratch) / engine
                shutil.rmtree(run, ignore_errors=True)
                write_lines(run / "data" / "train.src", src)
                write_lines(run / "data" / "train.tgt", tgt)
                cfg = config_from_dict(dict(tree, distill=dict(
                    tree["distill"], beam=5, batch_size=64, shard_size=2000, engine=engine)))
                t0 = time.perf_counter()
                done = translate_shards(cfg, run, teacher_dir=args.teacher, log=lambda _m: None)
                sec = time.perf_counter() - t0
                hyps[engine] = [json.loads(line)["hyp"] for i in sorted(done)
                                for line in shard_path(run, i).read_text().splitlines()]
                out["runs"].append({"engine": engine, "seconds": round(sec, 2),
                                    "sent_s": round(len(src) / sec, 1)})
                print(f"{engine}: {sec:.1f} s", flush=True)
    same = sum(a == b for a, b in zip(hyps["tensorflow"], hyps["ctranslate2"], strict=True))
    out["identical_lines"] = round(same / len(src), 4)
    out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    write_json(args.out, out)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
