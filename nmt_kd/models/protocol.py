"""`Seq2Seq`: the contract of `nmt_kd/models/contract.md` as a `typing.Protocol`.

Every registered architecture's model (and `nmt_kd.models.ensemble.Ensemble`) satisfies it;
decoding, translation, evaluation, distillation and export only use these members. The
protocol is `runtime_checkable`, so `isinstance(model, Seq2Seq)` checks that the methods
exist (not their shapes: `tests/seq2seq_harness.py` and each model's tests check those).

Shapes (B batch, S source length, T target length, V vocabulary), all batch-first:

- `__call__((src [B,S] int32, tgt_in [B,T] int32), training=False)` -> logits `[B,T,V]`
  float32, teacher-forced (`tgt_in` starts with bos; padding is id 0).
- `encode(src [B,S], training=False)` -> `dict[str, Tensor]`.
- `init_decode_state(encoded, max_len)` -> `dict[str, Tensor]` of a fixed shape for the
  whole decode, so beam search can tile it and reorder it along axis 0.
- `decode_step(token_ids [B] int32, step scalar int32, state)` -> `(logits [B,V] float32,
  new_state)`, incremental: never re-runs the prefix.
- `get_config()` holds `vocab_size`; `count_params()`; `compute_dtype`.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

State = dict[str, Any]  # name -> Tensor, batch-first


@runtime_checkable
class Seq2Seq(Protocol):
    compute_dtype: Any

    def __call__(self, inputs: tuple[Any, Any], training: bool | None = False) -> Any:
        """Teacher forcing: logits `[B, T, V]` float32."""
        ...

    def encode(self, src: Any, training: bool | None = False) -> State: ...

    def init_decode_state(self, encoded: State, max_len: Any) -> State: ...

    def decode_step(self, token_ids: Any, step: Any, state: State) -> tuple[Any, State]: ...

    def get_config(self) -> dict: ...

    def count_params(self) -> int: ...
