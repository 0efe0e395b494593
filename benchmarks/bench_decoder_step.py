"""Time one decoder step of an untrained model at batch 64 (architecture choices, no training).

    python benchmarks/bench_decoder_step.py student_rnn model.student_rnn.embed_dim=128

Builds the model from configs/multi30k_en_de.yaml with the given overrides, encodes 64 random
20-token sources and runs `greedy_search` for a fixed 32 steps (eos disabled) ten times;
prints the parameter count and milliseconds per step (encoder included, amortised).
"""

import sys
import time

import numpy as np
import tensorflow as tf

from nmt_kd.config import load_config
from nmt_kd.decoding import greedy_search
from nmt_kd.models.registry import build_model

STEPS, BATCH = 32, 64


def main(arch: str, overrides: list[str]) -> None:
    cfg = load_config("configs/multi30k_en_de.yaml", overrides=overrides)
    model = build_model(arch, cfg.model, cfg.vocab.size)
    src = tf.constant(np.random.default_rng(0).integers(4, cfg.vocab.size, (BATCH, 20), dtype=np.int32))

    @tf.function
    def run(src):
        state = model.init_decode_state(model.encode(src, training=False), STEPS)
        return greedy_search(model.decode_step, state, BATCH, STEPS, None, eos_id=-5)

    run(src)
    t0 = time.perf_counter()
    for _ in range(10):
        run(src)
    ms = (time.perf_counter() - t0) / 10 / STEPS * 1000
    print(f"{arch} {' '.join(overrides)}: {model.count_params():,} params, {ms:.2f} ms/step at batch {BATCH}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
