"""Fitting one model (teacher or student); `nmt_kd.training.trainer.train_model` is the entry.

- `trainer`: `Trainer` (set up, restore, run epochs, validate, finish) and `train_model`;
- `objectives`: the registered training objectives and the table of KD modes;
- `kd`: the teacher side of word-level KD (the frozen teacher, the top-k store);
- `steps`: the optimizer and learning-rate schedule, the compiled (and distributed) update;
- `data`: the run's text files and the training batch stream;
- `checkpoints`: the training checkpoint, the last-K and best managers, averaging.

Nothing is imported here, so that `nmt_kd.config` can read the KD modes from `objectives`
without loading TensorFlow.
"""
