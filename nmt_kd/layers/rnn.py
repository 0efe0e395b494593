"""Recurrent building blocks: GRU/LSTM cells, a bidirectional encoder layer, attention.

Conventions (shared with the Transformer layers):

* tensors are batch-first; only :func:`time_loop` works time-major internally;
* every layer owns its weights directly and exposes ``compute_weights()``, which returns
  them cast to the compute dtype once, so a time loop does not re-cast them at every step;
* recurrent states (``h``, ``c``) and gate arithmetic are float32 whatever the compute
  dtype: under ``mixed_bfloat16`` only the matmuls run in bfloat16, so rounding does not
  accumulate through the recurrence;
* the input projection ``x W + b`` of a whole sequence is one GEMM computed before the
  time loop; the loop body only multiplies the recurrent state (the cuDNN split).

GRU is the "reset-after" variant (Keras' default, cuDNN compatible) with a single bias:
``z, r = sigmoid(xW_zr + b_zr + hU_zr)``, ``n = tanh(xW_n + b_n + r * hU_n)``,
``h' = z * h + (1 - z) * n``. LSTM gates are ordered ``(i, f, o, g)`` so one sigmoid covers
the first three; the forget-gate bias starts at 1.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from nmt_kd.layers.attention import dynamic_zeros, linear, mask_value

__all__ = [
    "BahdanauAttention",
    "BidirectionalRNN",
    "BridgeProjection",
    "CELL_GATES",
    "LuongAttention",
    "RecurrentCell",
    "cell_update",
    "time_loop",
]

CELL_GATES = {"gru": 3, "lstm": 4}


def _check_cell(cell: str) -> str:
    if cell not in CELL_GATES:
        raise ValueError(f"cell must be one of {sorted(CELL_GATES)}, got {cell!r}")
    return cell


def _bias_initializer(cell: str, units: int, blocks: int = 1):
    """Zeros, except 1.0 on the LSTM forget gate of each of ``blocks`` fused blocks."""
    values = np.zeros((blocks, CELL_GATES[cell], units), np.float32)
    if cell == "lstm":
        values[:, 1] = 1.0  # gate order (i, f, o, g)
    values = values.reshape(-1)

    def init(shape, dtype=None):
        return tf.constant(values.reshape(shape), dtype=dtype or "float32")

    return init


def cell_update(
    cell: str, x_proj: tf.Tensor, h_proj: tf.Tensor, state: tuple[tf.Tensor, ...]
) -> tuple[tf.Tensor, ...]:
    """One recurrence step from the two projections, all float32.

    Args:
        cell: "gru" or "lstm".
        x_proj: ``[..., G*U]`` input projection ``x W + b``.
        h_proj: ``[..., G*U]`` recurrent projection ``h U``.
        state: ``(h,)`` for GRU, ``(h, c)`` for LSTM, each ``[..., U]``.

    Returns:
        The new state tuple.
    """
    if cell == "gru":
        (h,) = state
        x_zr, x_n = tf.split(x_proj, [-1, h.shape[-1]], axis=-1)
        h_zr, h_n = tf.split(h_proj, [-1, h.shape[-1]], axis=-1)
        z, r = tf.split(tf.sigmoid(x_zr + h_zr), 2, axis=-1)
        n = tf.tanh(x_n + r * h_n)
        return (n + z * (h - n),)
    _, c = state
    sig, g = tf.split(x_proj + h_proj, [-1, c.shape[-1]], axis=-1)
    i, f, o = tf.split(tf.sigmoid(sig), 3, axis=-1)
    c = f * c + i * tf.tanh(g)
    return (o * tf.tanh(c), c)


_NO_TENSOR_ARRAYS = [False]


@contextlib.contextmanager
def tflite_friendly_loops():
    """While tracing inside this context, `time_loop` uses no TensorArrays.

    For the TFLite export: TFLite cannot lower a TensorArray whose element shape has an
    unknown batch size (see `_time_loop_select`).
    """
    _NO_TENSOR_ARRAYS[0] = True
    try:
        yield
    finally:
        _NO_TENSOR_ARRAYS[0] = False


def time_loop(
    step_fn: Callable,
    inputs,
    state,
    output_dtype: tf.DType | str = tf.float32,
    output_shape: tf.TensorShape | None = None,
):
    """Run ``step_fn(x_t, state) -> (y_t, state)`` over the leading (time) axis.

    Args:
        step_fn: the loop body; ``y_t`` is one tensor, ``state`` any nest of tensors whose
            shapes stay fixed.
        inputs: a nest of time-major ``[T, ...]`` tensors (T >= 1).
        state: the initial state nest.
        output_dtype: dtype of ``y_t``.
        output_shape: the static shape of ``y_t`` where known (``None`` for an unknown
            batch); TFLite can lower the loop's TensorArrays only when it is given.

    Returns:
        ``(outputs [T, ...], final_state)``.

    A ``tf.while_loop`` over TensorArrays (what ``tf.scan`` builds, without the need to
    carry the outputs in the accumulator); ``maximum_iterations`` keeps it differentiable
    under XLA.
    """
    flat = [tf.convert_to_tensor(x) for x in tf.nest.flatten(inputs)]
    length = tf.shape(flat[0])[0]
    if _NO_TENSOR_ARRAYS[0]:
        return _time_loop_select(step_fn, inputs, flat, length, state, output_dtype)
    input_tas = [
        tf.TensorArray(x.dtype, size=length, element_shape=x.shape[1:]).unstack(x) for x in flat
    ]
    outputs = tf.TensorArray(output_dtype, size=length, element_shape=output_shape)

    def body(t, outputs, state):
        x_t = tf.nest.pack_sequence_as(inputs, [ta.read(t) for ta in input_tas])
        y_t, new_state = step_fn(x_t, state)
        for new, old in zip(tf.nest.flatten(new_state), tf.nest.flatten(state), strict=True):
            new.set_shape(old.shape)
        return t + 1, outputs.write(t, y_t), new_state

    _, outputs, state = tf.while_loop(
        lambda t, *_: t < length,
        body,
        (tf.constant(0, tf.int32), outputs, state),
        maximum_iterations=length,
    )
    return outputs.stack(), state


def _time_loop_select(step_fn, inputs, flat, length, state, output_dtype):
    """`time_loop` without TensorArrays (see `tflite_friendly_loops`).

    The outputs live in a fixed-shape ``[T, ...]`` tensor; step ``t`` writes row ``t`` with
    an elementwise select (quadratic in T: fine for sentences, not meant for training).
    Step 0 runs before the loop, to learn the output shape.
    """

    def run_step(t, state):
        x_t = tf.nest.pack_sequence_as(inputs, [tf.gather(x, t) for x in flat])
        y_t, new_state = step_fn(x_t, state)
        for new, old in zip(tf.nest.flatten(new_state), tf.nest.flatten(state), strict=True):
            new.set_shape(old.shape)
        return tf.expand_dims(tf.cast(y_t, output_dtype), 0), new_state

    def write(outputs, t, y_t):
        rows = tf.reshape(tf.equal(tf.range(length), t), [-1] + [1] * (y_t.shape.rank - 1))
        return tf.where(rows, y_t, outputs)

    y_0, state = run_step(tf.constant(0, tf.int32), state)
    multiples = tf.concat([tf.reshape(length, [1]), tf.ones([y_0.shape.rank - 1], tf.int32)], 0)
    outputs = tf.tile(y_0, multiples)  # every row holds y_0; rows 1.. are overwritten

    def body(t, outputs, state):
        y_t, new_state = run_step(t, state)
        return t + 1, write(outputs, t, y_t), new_state

    _, outputs, state = tf.while_loop(
        lambda t, *_: t < length, body, (tf.constant(1, tf.int32), outputs, state))
    return outputs, state


class _RecurrentBase(keras.layers.Layer):
    """Config and casting shared by the recurrent layers."""

    def __init__(self, units: int, input_dim: int, cell: str = "gru", **kwargs) -> None:
        super().__init__(**kwargs)
        self.units = int(units)
        self.input_dim = int(input_dim)
        self.cell = _check_cell(cell)
        self.gates = CELL_GATES[self.cell]

    def _w(self, variable) -> tf.Tensor:
        return tf.cast(variable, self.compute_dtype)

    def compute_weights(self) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """``(input_kernel, recurrent_kernel, bias)`` in the compute dtype."""
        return self._w(self.input_kernel), self._w(self.recurrent_kernel), self._w(self.bias)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"units": self.units, "input_dim": self.input_dim, "cell": self.cell})
        return config


@keras.saving.register_keras_serializable(package="nmt_kd")
class RecurrentCell(_RecurrentBase):
    """A GRU or LSTM cell (weights plus one-step math) for hand-written time loops.

    ``project_inputs`` computes ``x W + b`` for any number of positions at once; ``step``
    adds the recurrent projection and updates the state.

    Example:
        >>> cell = RecurrentCell(units=8, input_dim=4, cell="lstm")
        >>> cell.build()
        >>> x_proj = cell.project_inputs(tf.zeros([2, 4]))
        >>> h, c = cell.step(x_proj, cell.zero_state(2))
        >>> h.shape
        TensorShape([2, 8])
    """

    def build(self, input_shape=None) -> None:
        g, u = self.gates, self.units
        self.input_kernel = self.add_weight(
            name="input_kernel", shape=(self.input_dim, g * u), initializer="glorot_uniform"
        )
        self.recurrent_kernel = self.add_weight(
            name="recurrent_kernel", shape=(u, g * u), initializer="orthogonal"
        )
        self.bias = self.add_weight(
            name="bias", shape=(g * u,), initializer=_bias_initializer(self.cell, u)
        )

    def zero_state(self, batch_size) -> tuple[tf.Tensor, ...]:
        zeros = dynamic_zeros([batch_size, self.units], tf.float32)
        return (zeros,) if self.cell == "gru" else (zeros, zeros)

    def project_inputs(self, x: tf.Tensor, weights=None) -> tf.Tensor:
        """``[..., input_dim]`` -> float32 ``[..., G*U]`` = ``x W + b``."""
        w_in, _, bias = weights or self.compute_weights()
        return tf.cast(linear(tf.cast(x, self.compute_dtype), w_in, bias), tf.float32)

    def step(self, x_proj: tf.Tensor, state: tuple, weights=None) -> tuple[tf.Tensor, ...]:
        """``x_proj`` ``[B, G*U]`` float32 and the state -> the new state (float32)."""
        _, u_kernel, _ = weights or self.compute_weights()
        h_proj = tf.matmul(tf.cast(state[0], u_kernel.dtype), u_kernel)
        return cell_update(self.cell, x_proj, tf.cast(h_proj, tf.float32), state)

    def call(self, x: tf.Tensor, state: tuple) -> tuple[tf.Tensor, ...]:
        """One step from the raw input ``x`` ``[B, input_dim]``."""
        weights = self.compute_weights()
        return self.step(self.project_inputs(x, weights), state, weights)


@keras.saving.register_keras_serializable(package="nmt_kd")
class BidirectionalRNN(_RecurrentBase):
    """A padding-aware bidirectional GRU/LSTM layer; each direction has ``units // 2`` units.

    The outputs of the two directions are concatenated to ``[B, S, units]`` (no projection).
    The backward direction runs over each sequence reversed within its own length
    (``tf.reverse_sequence``), so right padding never reaches a real token; outputs at padded
    positions are zeroed. Both directions advance in ONE time loop: their recurrent kernels
    are stacked ``[2, U/2, G*U/2]`` and multiplied with one batched matmul per step.

    Example:
        >>> rnn = BidirectionalRNN(units=8, input_dim=4, cell="gru")
        >>> rnn(tf.zeros([2, 5, 4]), lengths=tf.constant([5, 3])).shape
        TensorShape([2, 5, 8])
    """

    def __init__(self, units: int, input_dim: int, cell: str = "gru", **kwargs) -> None:
        super().__init__(units, input_dim, cell, **kwargs)
        if self.units % 2:
            raise ValueError(f"BidirectionalRNN units must be even, got {units}")
        self.direction_units = self.units // 2

    def build(self, input_shape=None) -> None:
        g, u = self.gates, self.direction_units
        # Columns [0, G*u) are the forward direction, [G*u, 2*G*u) the backward one.
        self.input_kernel = self.add_weight(
            name="input_kernel", shape=(self.input_dim, 2 * g * u), initializer="glorot_uniform"
        )
        self.recurrent_kernel = self.add_weight(
            name="recurrent_kernel", shape=(2, u, g * u), initializer="orthogonal"
        )
        self.bias = self.add_weight(
            name="bias", shape=(2 * g * u,), initializer=_bias_initializer(self.cell, u, 2)
        )

    def call(self, x: tf.Tensor, lengths: tf.Tensor) -> tf.Tensor:
        """``x`` ``[B, S, input_dim]``, ``lengths`` int32 ``[B]`` -> ``[B, S, units]``."""
        w_in, u_kernel, bias = self.compute_weights()
        lengths = tf.cast(lengths, tf.int32)
        x = tf.cast(x, self.compute_dtype)
        x_proj = tf.cast(linear(x, w_in, bias), tf.float32)  # [B, S, 2*G*u], one GEMM
        fwd, bwd = tf.split(x_proj, 2, axis=-1)
        bwd = tf.reverse_sequence(bwd, lengths, seq_axis=1, batch_axis=0)
        steps = tf.transpose(tf.stack([fwd, bwd]), [2, 0, 1, 3])  # [S, 2, B, G*u]

        zeros = dynamic_zeros([2, tf.shape(x)[0], self.direction_units], tf.float32)
        state = (zeros,) if self.cell == "gru" else (zeros, zeros)

        def step(x_t, state):
            h_proj = tf.matmul(tf.cast(state[0], u_kernel.dtype), u_kernel)  # [2, B, G*u]
            state = cell_update(self.cell, x_t, tf.cast(h_proj, tf.float32), state)
            return state[0], state

        outputs, _ = time_loop(step, steps, state,
                               output_shape=tf.TensorShape([2, None, self.direction_units]))  # [S, 2, B, u]
        fwd, bwd = tf.unstack(tf.transpose(outputs, [1, 2, 0, 3]))  # each [B, S, u]
        bwd = tf.reverse_sequence(bwd, lengths, seq_axis=1, batch_axis=0)
        mask = tf.expand_dims(tf.sequence_mask(lengths, tf.shape(x)[1], tf.float32), -1)
        return tf.cast(tf.concat([fwd, bwd], axis=-1) * mask, self.compute_dtype)


@keras.saving.register_keras_serializable(package="nmt_kd")
class BridgeProjection(keras.layers.Layer):
    """``activation(x W + b)`` with explicit casting, usable outside ``__call__``.

    Example:
        >>> BridgeProjection(units=8, input_dim=4, activation="tanh")(tf.zeros([2, 4])).shape
        TensorShape([2, 8])
    """

    def __init__(
        self, units: int, input_dim: int, activation: str | None = None, use_bias: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.units = int(units)
        self.input_dim = int(input_dim)
        self.activation = activation
        self.use_bias = bool(use_bias)
        self._act = keras.activations.get(activation)

    def build(self, input_shape=None) -> None:
        self.kernel = self.add_weight(
            name="kernel", shape=(self.input_dim, self.units), initializer="glorot_uniform"
        )
        self.bias = (
            self.add_weight(name="bias", shape=(self.units,), initializer="zeros")
            if self.use_bias
            else None
        )

    def call(self, x: tf.Tensor) -> tf.Tensor:
        dt = self.compute_dtype
        bias = tf.cast(self.bias, dt) if self.bias is not None else None
        return self._act(linear(tf.cast(x, dt), tf.cast(self.kernel, dt), bias))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "input_dim": self.input_dim,
                "activation": self.activation,
                "use_bias": self.use_bias,
            }
        )
        return config


class _Attention(keras.layers.Layer):
    """Attention over an encoder memory plus the attentional output layer.

    Subclasses define ``_build_score``, ``compute_weights`` (a dict of cast weights),
    ``precompute_keys`` (once per source) and ``scores`` (once per decoder step). The
    attentional output is ``tanh([context; query] W_c + b_c)`` of ``output_dim`` units.
    Softmax runs in float32; padding is masked with :func:`mask_value`.
    """

    def __init__(self, memory_dim: int, query_dim: int, output_dim: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.memory_dim = int(memory_dim)
        self.query_dim = int(query_dim)
        self.output_dim = int(output_dim)

    def build(self, input_shape=None) -> None:
        self._build_score()
        self.output_kernel = self.add_weight(
            name="output_kernel",
            shape=(self.memory_dim + self.query_dim, self.output_dim),
            initializer="glorot_uniform",
        )
        self.output_bias = self.add_weight(
            name="output_bias", shape=(self.output_dim,), initializer="zeros"
        )

    def _w(self, variable) -> tf.Tensor:
        return tf.cast(variable, self.compute_dtype)

    def _output_weights(self) -> dict[str, tf.Tensor]:
        return {"output_kernel": self._w(self.output_kernel), "output_bias": self._w(self.output_bias)}

    def attend(
        self,
        query: tf.Tensor,
        keys: tf.Tensor,
        memory: tf.Tensor,
        src_mask: tf.Tensor,
        weights: dict | None = None,
    ) -> tf.Tensor:
        """Context ``[B, memory_dim]`` (compute dtype) for ``query`` ``[B, query_dim]``.

        ``keys`` come from :meth:`precompute_keys`; ``src_mask`` ``[B, S]`` is 1 for real
        tokens and 0 for padding.
        """
        weights = weights or self.compute_weights()
        scores = tf.cast(self.scores(query, keys, weights), tf.float32)
        scores = tf.where(src_mask > 0, scores, mask_value(tf.float32))
        probs = tf.cast(tf.nn.softmax(scores, axis=-1), memory.dtype)
        return tf.squeeze(tf.matmul(tf.expand_dims(probs, 1), memory), 1)

    def combine(self, context_query: tf.Tensor, weights: dict | None = None) -> tf.Tensor:
        """``[..., memory_dim + query_dim]`` (context then query) -> float32 ``[..., output_dim]``."""
        weights = weights or self.compute_weights()
        y = linear(
            tf.cast(context_query, self.compute_dtype),
            weights["output_kernel"],
            weights["output_bias"],
        )
        return tf.tanh(tf.cast(y, tf.float32))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "memory_dim": self.memory_dim,
                "query_dim": self.query_dim,
                "output_dim": self.output_dim,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="nmt_kd")
class LuongAttention(_Attention):
    """Luong "general" attention: ``score(h, m_s) = h . (m_s W_a)``.

    The keys ``memory W_a`` are computed once per source, so a step costs one batched
    matrix-vector product for the scores and one for the context.

    Example:
        >>> att = LuongAttention(memory_dim=8, query_dim=6, output_dim=4)
        >>> att.build()
        >>> memory = tf.random.normal([2, 5, 8])
        >>> keys = att.precompute_keys(memory)
        >>> att.attend(tf.zeros([2, 6]), keys, memory, tf.ones([2, 5])).shape
        TensorShape([2, 8])
    """

    def _build_score(self) -> None:
        self.key_kernel = self.add_weight(
            name="key_kernel", shape=(self.memory_dim, self.query_dim), initializer="glorot_uniform"
        )

    def compute_weights(self) -> dict[str, tf.Tensor]:
        return {"key_kernel": self._w(self.key_kernel), **self._output_weights()}

    def precompute_keys(self, memory: tf.Tensor, weights: dict | None = None) -> tf.Tensor:
        """``[B, S, memory_dim]`` -> ``[B, S, query_dim]``."""
        weights = weights or self.compute_weights()
        return linear(tf.cast(memory, self.compute_dtype), weights["key_kernel"])

    def scores(self, query: tf.Tensor, keys: tf.Tensor, weights: dict) -> tf.Tensor:
        query = tf.cast(query, keys.dtype)
        return tf.squeeze(tf.matmul(keys, tf.expand_dims(query, -1)), -1)


@keras.saving.register_keras_serializable(package="nmt_kd")
class BahdanauAttention(_Attention):
    """Bahdanau (additive) attention: ``score(s, m_s) = v . tanh(m_s W_k + s W_q + b)``.

    ``attention_dim`` defaults to ``query_dim``. The keys ``memory W_k`` are computed once
    per source.

    Example:
        >>> att = BahdanauAttention(memory_dim=8, query_dim=6, output_dim=4)
        >>> att.build()
        >>> memory = tf.random.normal([2, 5, 8])
        >>> keys = att.precompute_keys(memory)
        >>> att.attend(tf.zeros([2, 6]), keys, memory, tf.ones([2, 5])).shape
        TensorShape([2, 8])
    """

    def __init__(
        self, memory_dim: int, query_dim: int, output_dim: int, attention_dim: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(memory_dim, query_dim, output_dim, **kwargs)
        self.attention_dim = int(attention_dim or query_dim)

    def _build_score(self) -> None:
        a = self.attention_dim
        self.key_kernel = self.add_weight(
            name="key_kernel", shape=(self.memory_dim, a), initializer="glorot_uniform"
        )
        self.query_kernel = self.add_weight(
            name="query_kernel", shape=(self.query_dim, a), initializer="glorot_uniform"
        )
        self.query_bias = self.add_weight(name="query_bias", shape=(a,), initializer="zeros")
        self.score_vector = self.add_weight(
            name="score_vector", shape=(a, 1), initializer="glorot_uniform"
        )

    def compute_weights(self) -> dict[str, tf.Tensor]:
        return {
            "key_kernel": self._w(self.key_kernel),
            "query_kernel": self._w(self.query_kernel),
            "query_bias": self._w(self.query_bias),
            "score_vector": self._w(self.score_vector),
            **self._output_weights(),
        }

    def precompute_keys(self, memory: tf.Tensor, weights: dict | None = None) -> tf.Tensor:
        """``[B, S, memory_dim]`` -> ``[B, S, attention_dim]``."""
        weights = weights or self.compute_weights()
        return linear(tf.cast(memory, self.compute_dtype), weights["key_kernel"])

    def scores(self, query: tf.Tensor, keys: tf.Tensor, weights: dict) -> tf.Tensor:
        q = tf.matmul(tf.cast(query, keys.dtype), weights["query_kernel"])
        q = tf.nn.bias_add(q, weights["query_bias"])
        return tf.squeeze(linear(tf.tanh(keys + tf.expand_dims(q, 1)), weights["score_vector"]), -1)

    def get_config(self) -> dict:
        config = super().get_config()
        config["attention_dim"] = self.attention_dim
        return config
