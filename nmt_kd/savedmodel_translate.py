"""Translate with a SavedModel export (`nmt-kd export --format savedmodel`).

The export's `serving_default` signature takes sentences and returns translations: it
normalises, tokenizes, truncates, searches (its beam and length settings fixed at export
time, recorded in nmt_kd_export.json) and detokenizes inside the graph. `SavedModelBackend`
runs it as a `SearchBackend`, so a `Translator` batches, orders and counts for it as for any
model. The translator's tokenizer is the SentencePiece model the graph holds; it counts the
truncated inputs and the target pieces of each translation (its text encoded again, since the
signature returns text only).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from nmt_kd.backends import SearchOutput, SourceBatch
from nmt_kd.config import DecodeConfig
from nmt_kd.errors import UserError
from nmt_kd.fileio import read_json
from nmt_kd.tokenizer import Tokenizer

EXPORT_META = "nmt_kd_export.json"


def is_savedmodel_dir(path: str | Path) -> bool:
    return (Path(path) / "saved_model.pb").is_file()


def graph_spm_model(saved_model_pb: Path) -> bytes:
    """The SentencePiece model bytes held by the graph's tokenizer op."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString(saved_model_pb.read_bytes())
    found = set()
    for graph in proto.meta_graphs:
        nodes = [*graph.graph_def.node, *(n for f in graph.graph_def.library.function
                                          for n in f.node_def)]
        found |= {n.attr["model"].s for n in nodes if n.op == "SentencepieceOp"}
    if len(found) != 1:
        raise UserError(f"{saved_model_pb}: expected one SentencePiece model in the graph, "
                        f"found {len(found)} (not an nmt-kd export?)")
    return found.pop()


class SavedModelBackend:
    """A SavedModel export as a `SearchBackend`: one beam (the export's), one hypothesis."""

    format = "savedmodel"

    def __init__(self, export_dir: str | Path, cfg: DecodeConfig):
        import tensorflow as tf
        import tensorflow_text  # noqa: F401  (registers the SentencePiece ops)

        export_dir = Path(export_dir)
        if not is_savedmodel_dir(export_dir) or not (export_dir / EXPORT_META).is_file():
            raise UserError(f"{export_dir}: not an nmt-kd SavedModel export (no saved_model.pb "
                            f"and {EXPORT_META})")
        self.meta = read_json(export_dir / EXPORT_META)
        # the graph decodes with the settings it was exported with
        self.cfg = dataclasses.replace(cfg, **{k: self.meta[k] for k in (
            "beam", "length_penalty", "max_len_a", "max_len_b", "max_len_cap", "max_src_len")})
        self.tokenizer = Tokenizer.from_model_bytes(
            graph_spm_model(export_dir / "saved_model.pb"), export_dir / "saved_model.pb")
        self._loaded = tf.saved_model.load(str(export_dir))
        self._serve = self._loaded.signatures["serving_default"]
        self.size_bytes = sum(f.stat().st_size for f in export_dir.rglob("*") if f.is_file())

    def params(self) -> int:
        """The model's weights the graph holds (Keras' `count_params`: dropout seed states
        left out)."""
        return int(sum(np.prod(v.shape) for v in self._loaded.model_variables
                       if "seed_generator" not in v.name))

    def check(self, beam: int, nbest: int) -> None:
        if beam != self.cfg.beam or nbest != 1:
            raise UserError(f"this SavedModel was exported with beam {self.cfg.beam} and returns "
                            f"one translation per line: use beam {self.cfg.beam}, no n-best")

    def search(self, batch: SourceBatch, beam: int, max_len: int, nbest: int) -> SearchOutput:
        import tensorflow as tf

        out = self._serve(sentences=tf.constant(batch.lines))["translations"].numpy()
        texts = [t.decode("utf-8") for t in out]
        lengths = np.array([len(ids) for ids in self.tokenizer.encode(texts)], np.int32)
        return SearchOutput(None, lengths, np.zeros(len(texts), np.float32), texts)
