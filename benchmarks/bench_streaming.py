"""Peak memory of `nmt-kd translate` and `nmt-kd distill` on growing inputs (streaming check).

    python benchmarks/bench_streaming.py [--sizes 10000 100000] [--out docs/bench/bench_streaming.json]

Builds, in a scratch directory, a toy corpus of each size, a joint SentencePiece model and
an untrained tiny RNN student (the model's quality does not matter here, only the memory the
input and output take), then runs each command in a fresh subprocess and reads the peak
resident set size of exactly that process from `os.wait4`:

* translate: `nmt-kd translate --input F --output O --beam 1` with the default chunking, and
  with one chunk holding the whole input (what translate did before it streamed);
* distill:   `nmt-kd distill` (beam 1) over RUN/data/train.{src,tgt} of the same size, the
  untrained model standing in for the teacher (translation shard by shard, then the merge).

With `--compare-tree DIR` (an unpacked older checkout, e.g. `git archive HEAD | tar -x -C
DIR`), the same translate and distill commands also run on that code, for a before/after.

Streaming holds if the peak RSS at the largest size is about that of the smallest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_EN = ["the", "a", "dog", "cat", "man", "woman", "runs", "sits", "red", "big", "small", "house",
       "street", "ball", "plays", "with", "in", "on", "green", "child", "old", "young", "water"]


def sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(_EN) for _ in range(rng.randint(4, 14))).capitalize() + "."
            for _ in range(n)]


def write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(x + "\n" for x in lines), encoding="utf-8")
    return path


def build_model(work: Path) -> Path:
    """An untrained tiny RNN student with a SentencePiece model trained on toy text."""
    import keras

    from nmt_kd.config import ModelConfig, RNNConfig, VocabConfig
    from nmt_kd.models.persistence import save_model_dir
    from nmt_kd.models.registry import build_model as build
    from nmt_kd.tokenizer import Tokenizer, train_tokenizer

    src = write(work / "vocab_src.txt", sentences(2000, 1))
    tgt = write(work / "vocab_tgt.txt", [s.upper() for s in sentences(2000, 2)])
    tok = Tokenizer(train_tokenizer(VocabConfig(size=200), src, tgt, work / "vocab"))
    keras.utils.set_random_seed(0)
    model = build("student_rnn", ModelConfig(student_rnn=RNNConfig(embed_dim=32, hidden=32)),
                  tok.vocab_size)
    return save_model_dir(model, work / "model", tok, {"model_type": "student_rnn", "kd": "none"})


def peak_rss(cmd: list[str], log: Path, cwd: str | None = None) -> dict:
    """Run `cmd` in a fresh process (in `cwd`); its own peak RSS (MB) and wall seconds."""
    t0 = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{log.read_text()[-2000:]}")
    return {"peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux reports KiB
            "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--chunk-lines", type=int, default=10_000, help="translate's chunk size")
    ap.add_argument("--no-distill", action="store_true", help="measure translate only")
    ap.add_argument("--compare-tree", help="also run the commands on the code in this directory "
                    "(`python -m nmt_kd.cli` started there imports its nmt_kd first)")
    ap.add_argument("--work", help="scratch directory (default: a new temporary one)")
    ap.add_argument("--out", default="docs/bench/bench_streaming.json")
    ap.add_argument("--note", default="", help="recorded as is (e.g. what else ran on the machine)")
    ap.add_argument("--build-model-in", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build_model_in:  # the child that builds the model (see below)
        build_model(Path(args.build_model_in))
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_streaming."))
    # Build the model in a child process: this process must stay small, because on Linux a
    # child's ru_maxrss starts from its parent's resident size at fork (a parent that had
    # loaded TensorFlow would put a ~690 MB floor under every measurement).
    subprocess.run([sys.executable, __file__, "--build-model-in", str(work)], check=True)
    model = work / "model"
    nmt_kd = [sys.executable, "-m", "nmt_kd.cli"]
    decode = ["--set", "decode.max_len_cap=16", "--set", "decode.batch_size=64"]
    rows = []
    for n in args.sizes:
        inp = write(work / f"in{n}.txt", sentences(n, 10 + n))
        runs = [("translate", f"chunks of {args.chunk_lines}", ["--chunk-lines", str(args.chunk_lines)])]
        if n > args.chunk_lines:
            runs.append(("translate", "one chunk (the whole input in memory, as before streaming)",
                         ["--chunk-lines", str(n)]))
        if args.compare_tree:
            runs.append(("translate", f"code in {args.compare_tree}", []))
        for stage, mode, extra in runs:
            cmd = [*nmt_kd, "translate", "--model", str(model), "--input", str(inp), "--output",
                   str(work / f"out{n}.txt"), "--beam", "1", *decode, *extra]
            cwd = args.compare_tree if mode.startswith("code in") else None
            rows.append({"stage": stage, "mode": mode, "lines": n,
                         **peak_rss(cmd, work / "stderr.txt", cwd), "command": " ".join(["python", *cmd[1:]])})
            print(json.dumps(rows[-1]), flush=True)
        if not args.no_distill:
            run = work / f"run{n}"
            write(run / "data" / "train.src", sentences(n, 10 + n))
            write(run / "data" / "train.tgt", [s.upper() for s in sentences(n, 10 + n)])
            cfg = write(work / "distill.yaml", ["distill:", "  beam: 1", "  shard_size: 2000"])
            cmd = [*nmt_kd, "distill", "--config", str(cfg), "--run-dir", str(run),
                   "--teacher", str(model), *decode]
            for mode, cwd in [("shards of 2000 + merge", None)] + (
                    [(f"code in {args.compare_tree}", args.compare_tree)] if args.compare_tree else []):
                shutil.rmtree(run / "distill", ignore_errors=True)
                rows.append({"stage": "distill", "mode": mode, "lines": n,
                             **peak_rss(cmd, work / "stderr.txt", cwd),
                             "command": " ".join(["python", *cmd[1:]])})
                print(json.dumps(rows[-1]), flush=True)
    result = {
        "what": "peak RSS of one nmt-kd process (os.wait4 ru_maxrss) vs input lines; "
                "untrained tiny RNN student (embed 32, hidden 32), greedy, max_len_cap 16",
        "rows": rows,
        "note": args.note,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(),
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
