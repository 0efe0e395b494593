"""Incremental decoding (decode_step with caches) against re-running the whole prefix each step.

    python benchmarks/bench_incremental.py --model runs/multi30k_en_de/teacher \
        --src runs/multi30k_en_de/data/test.src --sentences 200 --batch-size 64

Both are greedy, compiled with tf.function, on the same batches and in the same run; the
naive loop calls the teacher-forced `call` on the growing prefix and keeps the last position.
Prints JSON with sentences/s of each, the speed-up, and how many outputs agree.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import tensorflow as tf

from nmt_kd import BOS_ID, EOS_ID
from nmt_kd.decoding import greedy_search
from nmt_kd.models.persistence import load_model_dir
from nmt_kd.translate import read_input_lines


def naive_greedy(model, src, max_len: int):
    batch = tf.shape(src)[0]

    def cond(step, prefix, finished):
        return tf.logical_and(step < max_len, tf.logical_not(tf.reduce_all(finished)))

    def body(step, prefix, finished):
        logits = model((src, prefix), training=False)[:, -1, :]
        nxt = tf.argmax(logits, axis=-1, output_type=tf.int32)
        nxt = tf.where(finished, tf.zeros_like(nxt), nxt)
        return step + 1, tf.concat([prefix, nxt[:, None]], axis=1), finished | tf.equal(nxt, EOS_ID)

    _, prefix, _ = tf.while_loop(
        cond, body, (tf.constant(0), tf.fill([batch, 1], BOS_ID), tf.zeros([batch], tf.bool)),
        shape_invariants=(tf.TensorShape([]), tf.TensorShape([None, None]), tf.TensorShape([None])))
    return prefix[:, 1:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--src", required=True)
    ap.add_argument("--sentences", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-len", type=int, default=80)
    args = ap.parse_args()
    model, tok, meta = load_model_dir(args.model)
    lines = read_input_lines(args.src)[: args.sentences]
    ids = [s + [EOS_ID] for s in tok.encode(lines)]
    batches = []
    for i in range(0, len(ids), args.batch_size):
        chunk = ids[i:i + args.batch_size]
        arr = np.zeros((len(chunk), max(map(len, chunk))), np.int32)
        for r, s in enumerate(chunk):
            arr[r, : len(s)] = s
        batches.append(tf.constant(arr))
    spec = [tf.TensorSpec([None, None], tf.int32)]

    @tf.function(input_signature=spec)
    def incremental(src):
        state = model.init_decode_state(model.encode(src), args.max_len)
        return greedy_search(model.decode_step, state, tf.shape(src)[0], args.max_len)["ids"]

    @tf.function(input_signature=spec)
    def naive(src):
        return naive_greedy(model, src, args.max_len)

    def run(fn):
        fn(batches[0])  # trace and warm up
        t0 = time.perf_counter()
        outs = [fn(b).numpy() for b in batches]
        return time.perf_counter() - t0, outs

    t_inc, out_inc = run(incremental)
    t_naive, out_naive = run(naive)
    agree = 0
    for a, b in zip(out_inc, out_naive, strict=True):
        for ra, rb in zip(a, b, strict=True):
            ra, rb = list(ra[ra > 0]), list(rb[(rb > 0)])
            rb = rb[: rb.index(EOS_ID)] if EOS_ID in rb else rb
            agree += ra == rb
    print(json.dumps({
        "model": args.model, "model_type": meta.get("model_type"), "sentences": len(lines),
        "batch_size": args.batch_size,
        "incremental_sentences_per_second": round(len(lines) / t_inc, 2),
        "naive_sentences_per_second": round(len(lines) / t_naive, 2),
        "speedup": round(t_naive / t_inc, 2), "identical_outputs": agree,
    }, indent=2))


if __name__ == "__main__":
    main()
