"""nmt-kd: knowledge distillation for neural machine translation (TensorFlow 2 + Keras 3)."""

__version__ = "0.1.0"

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
