"""Training steps/s on one worker vs two local workers (MultiWorkerMirroredStrategy).

    python benchmarks/bench_distributed.py --config configs/multi30k_en_de.yaml \
        --run-dir runs/multi30k_en_de --model student_rnn --steps 60 --out docs/bench/bench_distributed.json

Each setting trains `--model` from scratch twice, for `--warmup` and for `--warmup + --steps`
steps (evaluation off, in a scratch copy of the run's data), and reports
steps / (t_long - t_short): start-up and tracing cancel out. Two workers on one machine
share its cores, so the figure shows the strategy's overhead, not a speed-up.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nmt_kd.distributed import free_local_ports


def run(args, run_dir, steps, workers):
    cmd = [sys.executable, "-m", "nmt_kd.cli", "train", "--config", args.config, "--run-dir", str(run_dir),
           "--model", args.model, "--name", f"bench_{workers}w_{steps}",
           "--set", f"{section(args.model)}.max_steps={steps}", "--set", f"{section(args.model)}.eval_every=0",
           "--set", f"{section(args.model)}.checkpoint_every=0"]
    if workers > 1:
        cmd += ["--set", f"{section(args.model)}.strategy=multi_worker"]
    hosts = [f"127.0.0.1:{p}" for p in free_local_ports(workers)]
    t0 = time.perf_counter()
    procs = []
    for i in range(workers):
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="-1")
        if workers > 1:
            env["TF_CONFIG"] = json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}})
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            sys.exit(err[-3000:])
    return time.perf_counter() - t0


def section(model):
    return "train" if model == "teacher" else "student_train"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--model", default="student_rnn")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--out")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp) / "run"
        scratch.mkdir()
        for sub in ("data", "vocab"):
            shutil.copytree(Path(args.run_dir) / sub, scratch / sub)
        for workers in (1, 2):
            short = run(args, scratch, args.warmup, workers)
            long = run(args, scratch, args.warmup + args.steps, workers)
            rate = args.steps / (long - short)
            rows.append({"workers": workers, "steps_per_second": round(rate, 3),
                         "seconds_short": round(short, 1), "seconds_long": round(long, 1)})
            print(f"{workers} worker(s): {rate:.3f} steps/s (global batch as configured)")
    result = {"model": args.model, "steps": args.steps, "warmup": args.warmup, "rows": rows,
              "ratio_two_over_one": round(rows[1]["steps_per_second"] / rows[0]["steps_per_second"], 3)}
    print(json.dumps(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
