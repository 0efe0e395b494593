"""A model directory as one file: a teacher to ship, or to start a pipeline from.

    nmt-kd export --model runs/demo/teacher --format bundle --out teacher.nmtkd
    # prints the file's sha256: a config that starts from it names both
    #   train: {init: teacher.nmtkd, init_sha256: <that hash>}

The bundle is a zip archive of four members: `model.json` (the model directory's metadata),
`spm.model` (its SentencePiece model), `config.json` (the model's `get_config()`) and
`weights.npz` (every weight, in `get_weights()` order, stored as float16: half the bytes of
float32, and the variables are float32 again once loaded). Loading builds the model with
the package's own model class for its `model_type` from the plain JSON config, so no code
and no pickled object is read from the file (`np.load(..., allow_pickle=False)`).
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np

from nmt_kd.errors import UserError
from nmt_kd.fileio import atomic_open, sha256_file

MEMBERS = ("model.json", "spm.model", "config.json", "weights.npz")


def _model_class(model_type: str):
    from nmt_kd.models.registry import architecture_names, find_architecture

    arch = find_architecture(model_type or "")
    if arch is None or "bundle" not in arch.exports:
        names = [n for n in architecture_names() if "bundle" in find_architecture(n).exports]
        raise UserError(f"a bundle of model_type {model_type!r} cannot be loaded; "
                        f"expected {', '.join(names)}")
    return arch.model_class()


def pack(model_dir: str | Path, out: str | Path) -> str:
    """Write MODEL_DIR as one bundle file at OUT (atomically); returns its sha256."""
    from nmt_kd.models.persistence import load_model_dir
    from nmt_kd.models.registry import require_export

    model_dir = Path(model_dir)
    model, tokenizer, meta = load_model_dir(model_dir, "fp32")
    if meta.get("model_type") == "ensemble":
        raise UserError(f"{model_dir}: only a single model directory can be bundled "
                        f"(model_type {meta.get('model_type')!r})")
    require_export("bundle", model_dir, meta)
    weights = io.BytesIO()
    np.savez(weights, *[w.astype(np.float16) for w in model.get_weights()])
    config = {k: v for k, v in model.get_config().items() if k not in ("dtype", "name", "trainable")}
    with atomic_open(out, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("model.json", json.dumps(meta, indent=1, sort_keys=True))
        z.write(model_dir / "spm.model", "spm.model")
        z.writestr("config.json", json.dumps(config, sort_keys=True))
        z.writestr("weights.npz", weights.getvalue())
    return sha256_file(out)


def check_hash(bundle: str | Path, expected: str | None) -> None:
    """Refuse a bundle whose sha256 is not `expected` (naming the file and both hashes)."""
    bundle = Path(bundle)
    if not bundle.is_file():
        raise UserError(f"{bundle}: no such bundle file (train.init)")
    if not expected:
        raise UserError(f"{bundle}: train.init needs train.init_sha256, the file's sha256 "
                        f"(printed by `nmt-kd export --format bundle`); this file's is {sha256_file(bundle)}")
    got = sha256_file(bundle)
    if got != expected.lower():
        raise UserError(f"{bundle}: sha256 is {got}, but train.init_sha256 says {expected}; "
                        "the file is not the one the config names (damaged, or another model)")


def _open(bundle: Path) -> zipfile.ZipFile:
    try:
        z = zipfile.ZipFile(bundle)
    except zipfile.BadZipFile:
        raise UserError(f"{bundle}: not a model bundle (not a zip archive)") from None
    missing = [m for m in MEMBERS if m not in z.namelist()]
    if missing:
        raise UserError(f"{bundle}: not a model bundle (missing {', '.join(missing)})")
    return z


def tokenizer_bytes(bundle: str | Path) -> bytes:
    """The bundle's spm.model, as bytes (to compare two bundles' tokenizers)."""
    with _open(Path(bundle)) as z:
        return z.read("spm.model")


def extract_tokenizer(bundle: str | Path, out: str | Path) -> Path:
    """Write the bundle's spm.model to OUT (atomically)."""
    with _open(Path(bundle)) as z, atomic_open(out, "wb") as f:
        f.write(z.read("spm.model"))
    return Path(out)


def unpack(bundle: str | Path, out_dir: str | Path, expected_sha256: str | None,
           extra_meta: dict | None = None):
    """Check the bundle's hash, rebuild its model and write an ordinary model directory at
    OUT_DIR (model.keras, spm.model, model.json); returns the model."""
    import keras

    from nmt_kd.models.persistence import save_model_dir
    from nmt_kd.tokenizer import Tokenizer

    bundle, out_dir = Path(bundle), Path(out_dir)
    check_hash(bundle, expected_sha256)
    with _open(bundle) as z:
        meta = json.loads(z.read("model.json"))
        config = json.loads(z.read("config.json"))
        with np.load(io.BytesIO(z.read("weights.npz")), allow_pickle=False) as npz:
            weights = [npz[f"arr_{i}"].astype(np.float32) for i in range(len(npz.files))]
        spm_bytes = z.read("spm.model")
    keras.mixed_precision.set_global_policy("float32")
    model = _model_class(meta.get("model_type"))(**config)
    dummy = np.zeros((1, 2), np.int32)
    model((dummy, dummy), training=False)
    if [tuple(w.shape) for w in model.get_weights()] != [w.shape for w in weights]:
        raise UserError(f"{bundle}: its weights do not fit the model its config describes")
    model.set_weights(weights)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_open(out_dir / "spm.model", "wb") as f:
        f.write(spm_bytes)
    meta = dict(meta, init_from=str(bundle), init_sha256=sha256_file(bundle), **(extra_meta or {}))
    save_model_dir(model, out_dir, Tokenizer(out_dir / "spm.model"), meta)
    return model


def bundle_meta(bundle: str | Path) -> dict:
    with _open(Path(bundle)) as z:
        return json.loads(z.read("model.json"))
