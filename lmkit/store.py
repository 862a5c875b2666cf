"""Model folders on disk: parameters + tokenizer + manifest <-> files, atomically, data only.

Layout of a model folder::

    manifest.json    {"format": "lmkit-model", "version": 1, "kind": "sparse"|"dense", "groups",
                      "lambdas", "vocab_size", "config", "corpus", "tokenizer", "arrays",
                      "versions", "command", "created"}
    tokenizer.model  the SentencePiece model (its sha256 is in the manifest)
    params.npz       arrays, loaded with allow_pickle=False (sha256 in the manifest)

``params.npz`` holds ``q`` and per group g ``S{g}_data``, ``S{g}_indices``, ``S{g}_indptr``
(sparse form), or ``W{g}`` and ``b`` (dense form), and ``keys{g}`` for groups whose rows are
n-gram histories (pure n-gram models: ``G{g}`` too, the log back-off weight of each row). A
folder is written under a temporary name and renamed into place, so an interrupted save leaves
nothing half-written.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .errors import InputError, MissingPathError, ModelFormatError
from .params import DenseParams, SparseParams
from .sparse import csr_from_arrays, csr_to_arrays

FORMAT = "lmkit-model"
VERSION = 1


def sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def library_versions() -> dict:
    import scipy
    import sentencepiece

    from . import __version__
    return {"lmkit": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "scipy": scipy.__version__, "sentencepiece": sentencepiece.__version__}


def params_to_arrays(params) -> dict:
    """Flatten Sparse/Dense params into a dict of numpy arrays (see module docstring)."""
    arrays = {}
    if hasattr(params, "S"):
        arrays["q"] = params.q
        arrays["lambdas"] = np.asarray(params.lambdas, dtype=np.float64)
        for g, S in enumerate(params.S):
            arrays.update(csr_to_arrays(f"S{g}", S))
    else:
        arrays["b"] = params.b
        for g, W in enumerate(params.W):
            arrays[f"W{g}"] = W
    for g, k in enumerate(params.keys):
        if k is not None:
            arrays[f"keys{g}"] = k
    for g, lg in enumerate(params.info.get("loggamma") or []):  # MKN back-off weights (ngram.py)
        arrays[f"G{g}"] = lg
    return arrays


def arrays_to_params(kind: str, groups: list, arrays, info: dict):
    keys = [arrays[f"keys{g}"] if f"keys{g}" in arrays else None for g in range(len(groups))]
    if kind == "sparse":
        if "G0" in arrays:  # checked against the rows where used: ngram.loggamma_tables
            info = {**info, "loggamma": [arrays[f"G{g}"] for g in range(len(groups))
                                         if f"G{g}" in arrays]}
        S = [csr_from_arrays(f"S{g}", arrays) for g in range(len(groups))]
        return SparseParams(groups, arrays["q"], S, keys, arrays["lambdas"], info)
    W = [arrays[f"W{g}"] for g in range(len(groups))]
    return DenseParams(groups, W, arrays["b"], keys, info)


def check_output_path(path) -> None:
    """Refuse to write a model over something that is not a model folder (never replace user data)."""
    path = Path(path)
    if path.exists() and not (path / "manifest.json").is_file():
        raise InputError(f"{path}: exists and is not a model folder; pass a new path, or an "
                         "existing model folder to replace it")


def write_model_folder(path, manifest: dict, tokenizer_proto: bytes, arrays: dict) -> Path:
    """Write a model folder atomically: temp folder in the same parent, then rename."""
    path = Path(path)
    check_output_path(path)
    parent = path.parent if str(path.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    blob = buf.getvalue()
    manifest = dict(manifest)
    manifest.update({"format": FORMAT, "version": VERSION, "created": time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "versions": library_versions(),
        "tokenizer": {"file": "tokenizer.model", "sha256": sha256_bytes(tokenizer_proto)},
        "arrays": {"file": "params.npz", "sha256": sha256_bytes(blob), "bytes": len(blob)}})
    manifest.setdefault("command", " ".join(sys.argv))
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=parent))
    try:
        (tmp / "tokenizer.model").write_bytes(tokenizer_proto)
        (tmp / "params.npz").write_bytes(blob)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if path.exists():  # replace an older model: move it aside first, then drop it
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=parent))
            os.replace(path, old / "m")
            try:
                os.replace(tmp, path)
            except BaseException:  # put the old model back: a failed save changes nothing
                os.replace(old / "m", path)
                raise
            finally:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_model_folder(path):
    """Read and verify a model folder. Returns ``(manifest, tokenizer_proto, arrays)``."""
    path = Path(path)
    if not path.exists():
        raise MissingPathError(f"{path}: no such model folder; train one with `lmkit train --output {path}`")
    if not path.is_dir():
        raise ModelFormatError(f"{path}: not a model folder (it is a file); pass the folder written by `lmkit train`")
    mpath = path / "manifest.json"
    if not mpath.exists():
        raise ModelFormatError(f"{path}: no manifest.json, so this is not an lmkit model folder; "
                               "pass the folder written by `lmkit train`")
    try:
        manifest = json.loads(mpath.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelFormatError(f"{mpath}: corrupt manifest ({e}); re-train the model") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelFormatError(f"{path}: not an lmkit model (format {manifest.get('format') if isinstance(manifest, dict) else None!r}); "
                               "pass the folder written by `lmkit train`")
    if manifest.get("version") != VERSION:
        raise ModelFormatError(f"{path}: model format version {manifest.get('version')!r}, this lmkit reads "
                               f"version {VERSION}; re-train the model with this lmkit")
    tok_path, arr_path = path / "tokenizer.model", path / "params.npz"
    for p in (tok_path, arr_path):
        if not p.exists():
            raise ModelFormatError(f"{path}: missing {p.name}; the folder is incomplete, re-train the model")
    try:
        tok_sha, arr_sha = manifest["tokenizer"]["sha256"], manifest["arrays"]["sha256"]
    except (KeyError, TypeError) as e:
        raise ModelFormatError(f"{mpath}: manifest lacks {e}; the folder is incomplete, "
                               "re-train the model") from None
    proto = tok_path.read_bytes()
    if sha256_bytes(proto) != tok_sha:
        raise ModelFormatError(f"{tok_path}: the tokenizer does not match the model (sha256 differs); "
                               "restore the tokenizer.model the model was trained with, or re-train")
    blob = arr_path.read_bytes()
    if sha256_bytes(blob) != arr_sha:
        raise ModelFormatError(f"{arr_path}: corrupt or truncated ({len(blob)} bytes, expected "
                               f"{manifest['arrays'].get('bytes')}); re-train the model")
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise ModelFormatError(f"{arr_path}: unreadable arrays ({e}); re-train the model") from None
    return manifest, proto, arrays
