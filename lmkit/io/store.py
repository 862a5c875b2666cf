"""Model folders and output files on disk: atomic umask-respecting writes, validated bounded reads.

Layout of a model folder::

    manifest.json    {"format": "lmkit-model", "version": 1, "kind": "sparse"|"dense", "groups",
                      "lambdas", "vocab_size", "config", "corpus", "tokenizer", "arrays",
                      "versions", "command", "created"}
    tokenizer.model  the SentencePiece model (its sha256 is in the manifest)
    params.npz       uncompressed .npz of plain arrays (sha256 and size in the manifest),
                     each array's data 64-byte aligned in the file (a zip extra field pads
                     the member's local header), so it can be memory-mapped as is

``params.npz`` holds ``q`` (V,) float64 and ``lambdas`` (G,) float64 and per group g
``S{g}_data`` float64, ``S{g}_indices``/``S{g}_indptr`` int32|int64, ``S{g}_shape`` int64 (2,)
(sparse form), or ``W{g}`` (R_g, V) float32 and ``b`` (V,) float32 (dense form), and
``keys{g}`` (R_g,) int64 for groups whose rows are n-gram histories (chained ids: the key of
a ``Suffix(m)`` row is ``parent_row * V + oldest token``, see ``features.py``) or packed
skip-gram / cluster-history contexts (``features.Skip``, ``clusters.ClusterHistory``), for pure
n-gram models ``G{g}`` (R_g,) float64, the log back-off weight of each history row, and for
models with cluster-history groups ``clusters{C}`` (V,) int64, the token -> cluster table of
the groups with C clusters, which they are rebuilt with (``groups_from_names``: names + table),
and for models with line-position groups ``piece_bytes`` (V,) int64, the bytes each token adds
to its line (``linepos.LinePosition``; values in ``[0, linepos.MAX_PIECE_BYTES]``).

Writing (``write_model_folder``): the output is checked with ``check_output_writable`` (the
CLI calls it before any work) and the manifest as ``read_model_folder`` would check it, then
the folder is written under a hidden temporary name ``.NAME.tmp-PID-*`` next to it, its
``params.npz`` checked as a load would check it (mapped; nothing unloadable is written: the
temporary folder is removed and the error names the problem), and renamed into place
(``files.py``). An existing folder is
replaced only if its manifest names it an lmkit model (a note goes to stderr); anything else
is refused. A replace is one atomic swap where Linux offers ``RENAME_EXCHANGE``; elsewhere the
old folder is moved to ``.NAME.old-PID-*`` first and, if the process dies between the two
renames, the next load or write of NAME moves it back. Modes are 0o666/0o777 less the umask.

Reading (``read_model_folder``): a model folder is untrusted input. Its manifest goes through
``check_manifest``, the one check of every folder kind (explicit model, mixture, neural: format
and version constants live here only); every file is read by ``io.readfile.read_regular``, the one
bounded reader (a regular file no larger than a bound, ``params.npz`` exactly the manifest's
declared size); each ``.npy`` header is parsed here (no pickles, exact dtypes, sizes consistent
with the bytes present) and ``arrays_to_params`` checks every CSR (indices in range, sorted and
unique per row, ``indptr`` monotone), every value (finite, ``q > 0`` summing to 1,
``lambdas >= 0``) and every shape against the manifest before SciPy sees an index.
``params.npz`` is read once into private memory and the arrays view that copy, so a file
changed, truncated or rewritten in place after the load cannot reach a validated model (it
would otherwise be SIGBUS, or unchecked indices under SciPy). ``mmap=True`` maps the file
read-only instead (no copy, pages shared through the page cache, but only safe while nobody
changes the file in place: lmkit itself never does, a re-train renames a new folder over the
old one). Costs, measured by ``scripts/bench_load.py``: docs/guarantees.md. The sha256 of
``params.npz`` is not recomputed on load (every value is validated instead, and the hash lives
in the same folder); ``verify_folder`` (``lmkit verify``) checks it.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import mmap
import os
import platform
import re
import shutil
import stat
import sys
import tempfile
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import sentencepiece

from . import files
from ..config import LoadConfig
from ..errors import InputError, LmkitError, MissingPathError, ModelFormatError, OutputError
from .files import atomic_write  # noqa: F401 - re-exported: the one way lmkit writes a file
from .. import kinds
from ..features import Suffix, check_suffix_chain
from ..linepos import check_bytes_table
from ..version import __version__
from .npyfile import release_pages
from .readfile import open_regular, read_regular, sha256_file
from ..params import DenseParams, LazyCSRs, SparseParams, StoredCSR
from ..sparse import csr_to_arrays
from ..tokenizer import Tokenizer

# The folder formats lmkit writes, and the one version of each it reads (``check_manifest``).
FORMAT, VERSION = "lmkit-model", 1  # explicit models (kind sparse|dense) and mixtures
NEURAL_FORMAT, NEURAL_VERSION = "lmkit-neural", 2  # 2: weights in weights.npz, never a pickle
NEURAL_WEIGHTS = "weights.npz"
FORMATS = {FORMAT: VERSION, NEURAL_FORMAT: NEURAL_VERSION}


def folder_tokenizer(proto: bytes, tfile, vocab_size: int, model_says: str) -> Tokenizer:
    """The ``Tokenizer`` of a model folder from its checked ``tokenizer.model`` bytes, refused
    (``ModelFormatError`` naming ``tfile``) unless it parses and has ``vocab_size`` pieces;
    ``model_says``: where the model's own size comes from, for the message."""
    try:
        tokenizer = Tokenizer(proto)
    except InputError as e:
        raise ModelFormatError(f"{tfile}: {e}") from None
    if tokenizer.vocab_size != vocab_size:
        raise ModelFormatError(f"{tfile}: the tokenizer has {tokenizer.vocab_size} pieces, "
                               f"{model_says} {vocab_size}; the tokenizer does not match the "
                               "model, re-train")
    return tokenizer
MAX_MANIFEST_BYTES = 16 << 20
MAX_TOKENIZER_BYTES = 256 << 20
_FIX = "re-train the model"


def sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def library_versions() -> dict:
    import scipy  # here, not at the top: loading a model needs no SciPy (only saving names it)
    return {"lmkit": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "scipy": scipy.__version__, "sentencepiece": sentencepiece.__version__}


def manifest_stamp(tokenizer_proto: bytes, command: str | None = None, **versions) -> dict:
    """The fields every lmkit folder's manifest carries: ``created`` (UTC), ``versions`` (the
    libraries', plus ``versions``), ``tokenizer`` (file, sha256, bytes) and ``command`` (default:
    this process's argv)."""
    return {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "versions": {**library_versions(), **versions},
            "tokenizer": {"file": "tokenizer.model", "sha256": sha256_bytes(tokenizer_proto),
                          "bytes": len(tokenizer_proto)},
            "command": " ".join(sys.argv) if command is None else command}


def peek_manifest(path) -> dict | None:
    """The manifest of folder ``path`` as a dict, or None when it has no readable one: read as
    untrusted input (a regular file, at most ``MAX_MANIFEST_BYTES``), for dispatch decisions."""
    try:
        manifest = json.loads(read_regular(Path(path) / "manifest.json", "manifest", _FIX,
                                           limit=MAX_MANIFEST_BYTES, error=ModelFormatError))
    except (LmkitError, ValueError, OSError, RecursionError):
        return None
    return manifest if isinstance(manifest, dict) else None


def is_model_folder(path) -> bool:
    """True if ``path`` is a folder whose manifest says it is an lmkit model (format name check)."""
    # lmkit's own folders: explicit/mixture models and neural models (lmkit.neural.folder)
    return (peek_manifest(path) or {}).get("format") in FORMATS


def write_folder(path, fill, log=None) -> Path:
    """Write folder ``path`` atomically: ``fill(tmp)`` writes the files into a hidden temp folder
    next to it, which then takes the place of ``path`` (an existing lmkit model is replaced,
    anything else refused; see the module docstring). Returns ``path``."""
    path = Path(path)
    recover_interrupted(path, log)
    check_output_writable(path, folder=True)
    parent = path.parent if str(path.parent) else Path(".")
    tmp = None
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=files.tmp_prefix(path, "tmp"), dir=parent))
        os.chmod(tmp, 0o777 & ~files.umask())  # mkdtemp makes 0700
        fill(tmp)
        if os.path.lexists(path):
            (log or files.stderr)(f"lmkit: replacing the lmkit model folder {path}")
            files.replace_folder(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and not isinstance(e, OutputError):
            raise OutputError(f"{path}: cannot write the model ({e.strerror or e}); nothing was "
                              "changed, free space or pick another output folder") from None
        if isinstance(e, OutputError) and tmp is not None and str(tmp) in str(e):
            # a folder written inside ours (a mixture's components/N): name it where the user
            # will look for it, not in the hidden temp folder that is gone now
            raise OutputError(str(e).replace(str(tmp), str(path))) from None
        raise
    return path


def check_output_writable(path, *, folder: bool = False) -> Path:
    """``io.files.check_output_writable``; an existing folder output must be an lmkit model."""
    return files.check_output_writable(path, folder=folder, is_ours=is_model_folder)


def recover_interrupted(path, log=None) -> None:
    """``io.files.recover_interrupted`` for a model folder (restores only lmkit models)."""
    files.recover_interrupted(path, log, is_ours=is_model_folder)


def write_model_folder(path, manifest: dict, tokenizer_proto: bytes, arrays,
                       log=None) -> Path:
    """Write a model folder atomically (see the module docstring); returns its path.

    ``arrays``: name -> numpy array (``np.memmap`` included), or ``CompactArrays(params)``,
    which makes each group's arrays only as they are written; streamed into ``params.npz`` in
    chunks (no in-memory copy of the archive), then checked as a load would check them.
    """
    path = Path(path)
    m = _loadable_manifest(path, manifest)
    manifest = dict(manifest)
    manifest.update({"format": FORMAT, "version": VERSION,
                     **manifest_stamp(tokenizer_proto, manifest.get("command"))})

    def fill(tmp: Path) -> None:
        write_synced(tmp / "tokenizer.model", tokenizer_proto)
        size, digest = write_npz(tmp / "params.npz", arrays)
        _check_loadable(path, m, tmp / "params.npz", size)
        manifest["arrays"] = {"file": "params.npz", "sha256": digest, "bytes": size}
        write_manifest(tmp, manifest)

    return write_folder(path, fill, log)


ALIGN = 64  # every array's data starts at a multiple of this in params.npz (memory-mappable)
_PAD_ID = 0xD935  # zip extra-field id used for alignment padding (as Android's zipalign)
_CHUNK = 16 << 20


def write_npz(path: Path, arrays: dict) -> tuple[int, str]:
    """Write ``arrays`` as an uncompressed ``.npz`` whose array data are ``ALIGN``-aligned in
    the file (a zip extra field pads each local header), so ``read_model_folder`` can map them
    without copying; ``np.load`` reads it as any ``.npz``. Returns ``(bytes, sha256)``."""
    with open(path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED,
                                                allowZip64=True) as zf:
        for name, a in arrays.items():
            if not isinstance(a, _Converted):
                a = np.asarray(a)
                if not a.flags.c_contiguous:
                    a = np.ascontiguousarray(a)
            hdr = io.BytesIO()
            np.lib.format.write_array_header_1_0(
                hdr, {"descr": np.lib.format.dtype_to_descr(a.dtype), "fortran_order": False,
                      "shape": a.shape})
            npy_header = hdr.getvalue()
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            info.file_size = len(npy_header) + a.nbytes
            zip64 = info.file_size * 1.05 > zipfile.ZIP64_LIMIT  # zipfile's own rule
            local = 30 + len(info.filename.encode()) + (20 if zip64 else 0)
            pad = -(f.tell() + local + len(npy_header)) % ALIGN
            if pad:
                pad += ALIGN if pad < 4 else 0  # an extra-field record is at least 4 bytes
                info.extra = (_PAD_ID.to_bytes(2, "little") + (pad - 4).to_bytes(2, "little")
                              + bytes(pad - 4))
            with zf.open(info, "w", force_zip64=zip64) as member:
                member.write(npy_header)
                if isinstance(a, _Converted):  # converted a block at a time as written
                    for block in a.blocks():
                        member.write(block.data)
                    continue
                flat = a.reshape(-1).view(np.uint8) if a.size else a.view(np.uint8)
                for i in range(0, len(flat), _CHUNK):
                    member.write(flat[i:i + _CHUNK].data)
                    release_pages(flat[i:i + _CHUNK])  # a mapped array leaves the RSS as written
        zf.close()
        f.flush()
        os.fsync(f.fileno())
        size = f.tell()
    return size, sha256_file(path)


def _not_written(path: Path, e: Exception) -> InputError:
    return InputError(f"{path}: not written, the model could not be loaded back: {e}")


def _loadable_manifest(path: Path, manifest: dict) -> dict:
    """The manifest as ``read_model_folder`` would read it back (the types JSON gives back),
    after ``check_manifest``: refused before anything is written."""
    m = dict(manifest, format=FORMAT, version=VERSION, tokenizer={"sha256": ""},
             arrays={"sha256": "", "bytes": 1})
    try:
        return check_manifest(json.loads(json.dumps(m)), path, EXPLICIT)
    except (ModelFormatError, ValueError) as e:
        raise _not_written(path, e) from None


def _check_loadable(path: Path, m: dict, npz: Path, size: int) -> None:
    """Refuse to write what ``read_model_folder`` + ``arrays_to_params`` would refuse to load
    (e.g. NaN lambdas): the same checks, run on ``npz`` as written (``size`` bytes, in the
    temporary folder, before the rename) and mapped as ``mmap=True`` maps it, so the check
    holds no second copy of the model (its pages leave the RSS as they are checked)."""
    try:
        arrays = map_npz(npz, size, where="the model")
        groups = groups_from_names(m["groups"], arrays, where="the model")
        arrays_to_params(m["kind"], groups, arrays, {}, where="the model", lambdas=m.get("lambdas"),
                         check_only=True)
    except (ModelFormatError, ValueError) as e:
        raise _not_written(path, e) from None


def check_output_path(path) -> Path:
    """``check_output_writable(path, folder=True)``: the check for a model folder output."""
    return check_output_writable(path, folder=True)


# ---- reading ----------------------------------------------------------------------------------
def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# What each folder kind is, for messages that say what a verb was given and what it takes.
_KIND_NAMES = {"sparse": "an explicit model", "dense": "an explicit model",
               "mixture": "a linear mixture (written by `lmkit interpolate` or "
                          "`lmkit train --solver residual`)",
               "neural": "a neural model (written by `lmkit train --solver transformer|residual`)"}
EXPLICIT = ("sparse", "dense")
ALL_KINDS = ("sparse", "dense", "mixture", "neural")
# what a step that reads only explicit models says about the others
EXPLICIT_ONLY = ("this step takes an explicit model folder (written by `lmkit train` or "
                 "`lmkit import-arpa`; a mixture's components/N are such folders); eval, score, "
                 "generate, next and vocab take every kind")


def folder_kind(manifest: dict) -> str | None:
    """``sparse`` | ``dense`` | ``mixture`` (format lmkit-model) or ``neural`` (format
    lmkit-neural); None for anything else."""
    if manifest.get("format") == NEURAL_FORMAT:
        return "neural"
    kind = manifest.get("kind") if manifest.get("format") == FORMAT else None
    return kind if isinstance(kind, str) and kind in _KIND_NAMES else None


def check_manifest(manifest, path: Path, accept=ALL_KINDS, check=None, takes: str = "") -> dict:
    """The one manifest check of every lmkit folder kind (model, mixture, neural): format and
    version, that the kind is one of ``accept`` (else ``takes`` says what the step takes), the
    fields every folder has (``tokenizer``) and those of its kind; ``check(manifest, bad)``
    adds the caller's checks (e.g. the neural config's ranges). Returns the manifest or raises
    ``ModelFormatError`` naming ``path/manifest.json``, the field and the fix."""
    path = Path(path)
    fix = [_FIX]

    def bad(what):
        return ModelFormatError(f"{path / 'manifest.json'}: {what}; {fix[0]}")

    got = manifest.get("format") if isinstance(manifest, dict) else None
    if got not in FORMATS:
        raise ModelFormatError(f"{path}: not an lmkit model (format {str(got)[:40]!r}); "
                               "pass a folder written by `lmkit train` or `lmkit interpolate`")
    kind = folder_kind(manifest)
    if kind is not None and kind not in accept:  # what it is first, whatever its version
        raise ModelFormatError(f"{path}: is {_KIND_NAMES[kind]}; "
                               + (takes or f"this step takes {' or '.join(accept)} folders"))
    if manifest.get("version") != FORMATS[got]:
        raise ModelFormatError(f"{path}: {'neural ' if got == NEURAL_FORMAT else ''}model format "
                               f"version {str(manifest.get('version'))[:20]}, "
                               f"this lmkit reads version {FORMATS[got]}; re-train the model "
                               "with this lmkit")
    if kind is None:
        raise bad(f"'kind' must be 'sparse' or 'dense' (a model) or 'mixture', got "
                  f"{str(manifest.get('kind'))[:40]!r}")
    if kind == "mixture":
        fix[0] = "re-run `lmkit interpolate` on its models"
    entry = manifest.get("tokenizer")
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
        raise bad("'tokenizer' must be an object with a 'sha256' string")
    if "bytes" in entry and (not _is_int(entry["bytes"]) or entry["bytes"] < 0):
        raise bad(f"'tokenizer.bytes' must be an integer >= 0, got {entry['bytes']!r}")
    V = manifest.get("vocab_size")
    if kind != "neural" and (not _is_int(V) or V < 1):
        raise bad(f"'vocab_size' must be an integer >= 1, got {str(V)[:40]}")
    for key in ("config", "corpus", "info", "training"):
        if manifest.get(key) is not None and not isinstance(manifest[key], dict):
            raise bad(f"'{key}' must be an object, got {type(manifest[key]).__name__}")
    {"sparse": _check_model, "dense": _check_model, "mixture": _check_mixture,
     "neural": _check_neural}[kind](manifest, bad)
    if check is not None:
        check(manifest, bad)
    return manifest


def _check_model(manifest, bad) -> None:
    entry = manifest.get("arrays")
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
        raise bad("'arrays' must be an object with a 'sha256' string")
    if not _is_int(entry.get("bytes")) or entry["bytes"] < 1:
        raise bad(f"'arrays.bytes' must be an integer >= 1, got {str(entry.get('bytes'))[:40]}")
    groups = manifest.get("groups")
    if (not isinstance(groups, list) or not groups or not all(isinstance(g, str) for g in groups)
            or len(set(groups)) != len(groups)):
        raise bad(f"'groups' must be a non-empty list of distinct names, got {str(groups)[:80]}")
    if manifest["kind"] == "sparse":
        lam = manifest.get("lambdas")
        if (not isinstance(lam, list) or len(lam) != len(groups)
                or not all(_is_num(x) and x >= 0 for x in lam)):
            raise bad(f"'lambdas' must be {len(groups)} finite numbers >= 0 (one per group), "
                      f"got {str(lam)[:80]}")


def _check_mixture(manifest, bad) -> None:
    comps, w = manifest.get("components"), manifest.get("weights")
    if (not isinstance(comps, list) or len(comps) < 2
            or comps != [f"components/{k}" for k in range(len(comps))]):
        raise bad(f"'components' must be ['components/0', 'components/1', ...] (2 or more), "
                  f"got {str(comps)[:80]}")
    if (not isinstance(w, list) or len(w) != len(comps) or not all(_is_num(x) and x >= 0 for x in w)
            or abs(sum(w) - 1.0) > 1e-6):
        raise bad(f"'weights' must be {len(comps)} finite numbers >= 0 summing to 1 (one per "
                  f"component), got {str(w)[:80]}")


def _check_neural(manifest, bad) -> None:
    entry = manifest.get("weights")
    if (not isinstance(entry, dict) or entry.get("file") != NEURAL_WEIGHTS
            or not isinstance(entry.get("sha256"), str)
            or not _is_int(entry.get("bytes")) or entry["bytes"] < 1):
        raise bad(f"'weights' must be {{'file': '{NEURAL_WEIGHTS}', 'sha256': ..., 'bytes': "
                  f"N >= 1}}, got {str(entry)[:80]}")
    if not isinstance(manifest.get("config"), dict):
        raise bad("'config' (the network's sizes) must be an object")
    for key in ("residual", "learn_scale"):
        if not isinstance(manifest.get(key), bool):
            raise bad(f"'{key}' must be true or false, got {str(manifest.get(key))[:40]}")


def read_manifest(path, accept=ALL_KINDS, check=None, takes: str = "") -> dict:
    """The checked manifest of folder ``path`` (``check_manifest``), read as untrusted input:
    ``manifest.json`` a regular file of at most ``MAX_MANIFEST_BYTES``, valid JSON."""
    path = Path(path)
    if not os.path.lexists(path):
        recover_interrupted(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MissingPathError(f"{path}: no such model folder; train one with "
                               f"`lmkit train --output {path}`") from None
    except OSError as e:
        raise ModelFormatError(f"{path}: cannot open the model folder ({e.strerror})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ModelFormatError(f"{path}: not a model folder (it is a file); pass the folder "
                               "written by `lmkit train`")
    mpath = path / "manifest.json"
    raw = read_regular(mpath, "manifest", _FIX, limit=MAX_MANIFEST_BYTES, error=ModelFormatError,
                       missing=f"{path}: no manifest.json, so this is not an lmkit model "
                               "folder; pass the folder written by `lmkit train`")
    try:
        manifest = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ModelFormatError(f"{mpath}: corrupt manifest ({str(e)[:100]}); {_FIX}") from None
    return check_manifest(manifest, path, accept, check, takes)


def read_member(path: Path, what: str, **checks) -> bytes:
    """The bytes of the folder member ``path`` (``io.readfile.read_regular``, as untrusted input;
    a missing member is an incomplete folder)."""
    return read_regular(path, what, _FIX, error=ModelFormatError,
                        missing=f"{path.parent}: missing {path.name}; the folder is "
                                f"incomplete, {_FIX}", **checks)


def write_manifest(folder: Path, manifest: dict) -> None:
    """Write ``folder/manifest.json`` and fsync it (inside ``write_folder``'s temp folder)."""
    write_synced(Path(folder) / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())


def write_synced(path: Path, data: bytes) -> None:
    """Write ``data`` to the new file ``path`` and fsync it (a member of a temp folder)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())

def read_model_folder(path, mmap: bool = LoadConfig.mmap):
    """Read and verify a model folder. Returns ``(manifest, tokenizer_proto, arrays)``.

    ``arrays``: name -> read-only numpy array, each header checked (see ``read_npz``); the
    values are checked by ``arrays_to_params``. They view a private in-memory copy of
    ``params.npz`` (read once; nothing that happens to the file later can reach them), or with
    ``mmap=True`` a read-only shared mapping of the file (no copy: pages come from the page
    cache, shared by every process that maps the model; but a file changed or truncated in
    place while mapped changes the arrays under the validated model or kills the process
    with SIGBUS; see docs/guarantees.md).
    """
    path = Path(path)
    manifest = read_manifest(path, EXPLICIT, takes=EXPLICIT_ONLY)
    tok_path, arr_path = path / "tokenizer.model", path / "params.npz"
    for p in (tok_path, arr_path):
        if not os.path.lexists(p):
            raise ModelFormatError(f"{path}: missing {p.name}; the folder is incomplete, {_FIX}")
    proto = read_member(tok_path, "tokenizer",
                        limit=min(manifest["tokenizer"].get("bytes", MAX_TOKENIZER_BYTES),
                                  MAX_TOKENIZER_BYTES))
    if sha256_bytes(proto) != manifest["tokenizer"]["sha256"]:
        raise ModelFormatError(f"{tok_path}: the tokenizer does not match the model (sha256 "
                               "differs); restore the tokenizer.model the model was trained "
                               "with, or re-train")
    size = manifest["arrays"]["bytes"]
    if mmap:
        return manifest, proto, map_npz(arr_path, size)
    return manifest, proto, read_npz(read_member(arr_path, "arrays", size=size), arr_path)


def map_npz(path: Path, expected: int, where=None) -> dict:
    """The arrays of ``params.npz`` (``expected`` bytes, from the manifest), memory-mapped
    read-only: a regular file of exactly that size, each member checked by ``read_npz``
    (its messages name ``where``, default ``path``)."""
    f, _ = open_regular(path, "arrays", _FIX, size=expected, error=ModelFormatError)
    with f:
        try:
            view = mmap.mmap(f.fileno(), expected, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as e:
            raise ModelFormatError(f"{path}: cannot map the arrays ({e}); {_FIX}") from None
    return read_npz(view, where or path)


def verify_folder(path) -> dict:
    """``lmkit verify``: the sha256 of every file of a model folder against its manifest, on top
    of the checks every load makes. Loading skips the hash of ``params.npz`` (it would read all
    of it again; every array is validated instead), so this is the way to detect a flipped bit
    in a value that is still valid. Returns ``{"file": sha256}``; raises ``ModelFormatError``
    naming the file that differs."""
    path = Path(path)
    manifest = read_manifest(path, EXPLICIT, takes=EXPLICIT_ONLY)
    got = sha256_file(path / "params.npz", "arrays", _FIX, size=manifest["arrays"]["bytes"],
                      error=ModelFormatError)
    if got != manifest["arrays"]["sha256"]:
        raise ModelFormatError(f"{path / 'params.npz'}: sha256 {got[:12]}... differs from the "
                               f"manifest's {manifest['arrays']['sha256'][:12]}...; the arrays "
                               f"changed after training, {_FIX}")
    return {"tokenizer.model": manifest["tokenizer"]["sha256"], "params.npz": got}


_DTYPES = {"<f8", "<f4", "<i8", "<i4", "<u2"}  # <u2: compact columns and row lengths


def read_npz(blob, where) -> dict:
    """Arrays of an uncompressed ``.npz`` (bytes or a read-only ``mmap``) without ``np.load``:
    each ``.npy`` header is parsed and checked (plain little-endian float/int dtypes only, never
    objects or pickles, data size = shape x itemsize) before any memory is allocated. Returns
    read-only arrays viewing ``blob`` (copied only where a member's data is not aligned)."""
    def bad(what):
        return ModelFormatError(f"{where}: {what}; {_FIX}")

    try:
        zf = zipfile.ZipFile(_Reader(blob))  # no copy of the archive
        infos = zf.infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise bad(f"unreadable arrays ({e})") from None
    if sum(i.file_size for i in infos) > len(blob):
        raise bad("arrays larger than the file (compressed members are not accepted)")
    arrays = {}
    view = memoryview(blob)
    for info in infos:
        name = info.filename.removesuffix(".npy")
        if info.compress_type != zipfile.ZIP_STORED or not info.filename.endswith(".npy"):
            raise bad(f"member {info.filename!r} is not a stored .npy array")
        # a stored member is its bytes in place: read the header there, view the data (no copy;
        # every value is checked by arrays_to_params, so the member CRCs add nothing)
        start = info.header_offset
        local = view[start:start + 30]
        if len(local) < 30 or bytes(local[:4]) != b"PK\x03\x04":
            raise bad(f"array {name!r}: bad zip entry")
        begin = (start + 30 + int.from_bytes(local[26:28], "little")  # + name length
                 + int.from_bytes(local[28:30], "little"))  # + extra field length
        data = view[begin:begin + info.file_size]
        if len(data) != info.file_size:
            raise bad(f"array {name!r}: the zip entry runs past the end of the file")
        try:
            f = io.BytesIO(data[:1 << 16])  # .npy headers are short
            major, _ = np.lib.format.read_magic(f)
            reader = (np.lib.format.read_array_header_1_0 if major == 1
                      else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = reader(f)
        except (ValueError, OSError, SyntaxError, KeyError) as e:
            raise bad(f"array {name!r} has an unreadable header ({e})") from None
        if dtype.hasobject:
            raise bad(f"array {name!r} holds Python objects (a pickle); lmkit never loads pickles")
        if dtype.str not in _DTYPES:
            raise bad(f"array {name!r} has dtype {dtype.str}, not one of {sorted(_DTYPES)}")
        count = math.prod(shape)
        if len(data) - f.tell() != count * dtype.itemsize:
            raise bad(f"array {name!r}: {len(data) - f.tell()} data bytes for shape {shape}")
        a = np.frombuffer(data, dtype=dtype, count=count, offset=f.tell())
        if not a.flags.aligned:  # written by another tool: copy rather than slow every access
            a = a.copy()
        a = a.reshape(shape, order="F" if fortran else "C")
        a.flags.writeable = False
        arrays[name] = a
    return arrays


class _Reader(io.RawIOBase):
    """A seekable read-only file over a buffer, without copying it (``zipfile`` reads the
    central directory through it; ``io.BytesIO(mmap)`` would copy the whole file)."""

    def __init__(self, buf):
        self._view, self._pos = memoryview(buf), 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, pos, whence=0):
        self._pos = max(0, pos + (0, self._pos, len(self._view))[whence])
        return self._pos

    def tell(self):
        return self._pos

    def readinto(self, b):
        n = len(self._view[self._pos:self._pos + len(b)])
        b[:n] = self._view[self._pos:self._pos + n]
        self._pos += n
        return n


# ---- arrays <-> params -----------------------------------------------------------------------
def params_to_arrays(params) -> dict:
    """Flatten Sparse/Dense params into a dict of numpy arrays (see module docstring)."""
    return {name: np.asarray(a) for name, a in CompactArrays(params).items()}


class CompactArrays:
    """``params_to_arrays(params)`` made one group at a time: ``items()`` yields the same
    names and arrays in the same order, each group's compact arrays (``_compact_csr``,
    ``_compact_keys``) built only when reached, so a writer that consumes them in turn
    (``write_npz``) holds one group's copies at a time, not the whole model's."""

    def __init__(self, params):
        self.params = params

    def items(self):
        p = self.params
        if hasattr(p, "S"):
            yield "q", p.q
            yield "lambdas", np.asarray(p.lambdas, dtype=np.float64)
            for g, S in enumerate(p.S):
                yield from _compact_csr(f"S{g}", S).items()
        else:
            yield "b", p.b
            for g, W in enumerate(p.W):
                yield f"W{g}", W
        for g, k in enumerate(p.keys):
            if k is not None:
                yield from _compact_keys(f"keys{g}", k).items()
        for g, lg in enumerate(p.info.get("loggamma") or []):  # MKN back-off weights (ngram.mkn)
            yield f"G{g}", lg
        # the tables some kinds are rebuilt with (clusters{C}, piece_bytes; kinds.py)
        yield from kinds.group_tables(p.groups).items()


# ---- compact storage (lossless): smaller dtypes where the values fit, decoded on load --------
_BLOCK = 1 << 20  # values converted at once by ``_compact_csr`` / ``_compact_keys``


class _Converted:
    """A 1-d array made from ``src`` a block at a time (``fn(lo, hi)``: the converted values
    ``lo:hi``, in ``dtype``), never whole: ``write_npz`` writes it block by block (each
    block's mapped source pages released as it goes); ``np.asarray`` makes it whole (for
    ``params_to_arrays``). Same values as converting ``src`` at once."""

    def __init__(self, src, n: int, dtype, fn):
        self.src, self.shape, self.dtype, self.fn = src, (n,), np.dtype(dtype), fn
        self.size, self.nbytes = n, n * self.dtype.itemsize

    def blocks(self):
        for lo in range(0, self.size, _BLOCK):
            hi = min(lo + _BLOCK, self.size)
            out = np.ascontiguousarray(self.fn(lo, hi), dtype=self.dtype)
            release_pages(self.src[lo:hi + 1])
            yield out

    def __array__(self, dtype=None, copy=None):
        parts = list(self.blocks())
        a = np.concatenate(parts) if parts else np.zeros(0, dtype=self.dtype)
        return a if dtype is None else a.astype(dtype)


def _all_blocks(n: int, test) -> bool:
    """``test(lo, hi)`` holds for every block ``lo:hi`` of ``n`` values (block temporaries)."""
    return all(test(lo, min(lo + _BLOCK, n)) for lo in range(0, n, _BLOCK))


def _compact_csr(name: str, S) -> dict:
    """``csr_to_arrays`` in the smallest exact form: values as float32 when every value is a
    float32 (``compact.round_float32``), columns as uint16 when V <= 65536, and the row
    pointers as uint16 row lengths (``{name}_rowlen``) when every row fits. The checks and
    conversions go a block of values at a time (``_Converted``): no array-sized temporaries
    on a large (memory-mapped) group."""
    out = csr_to_arrays(name, S)
    data, indices, indptr = (out[f"{name}_{k}"] for k in ("data", "indices", "indptr"))

    def f32(lo, hi):
        x = data[lo:hi]
        return np.array_equal(x.astype(np.float32).astype(np.float64), x)
    if data.dtype == np.float64 and _all_blocks(len(data), f32):
        out[f"{name}_data"] = _Converted(data, len(data), np.float32,
                                         lambda lo, hi: data[lo:hi].astype(np.float32))
    release_pages(data)
    if S.shape[1] <= 1 << 16:
        out[f"{name}_indices"] = _Converted(indices, len(indices), np.uint16,
                                            lambda lo, hi: indices[lo:hi].astype(np.uint16))
        n = len(indptr) - 1
        if _all_blocks(n, lambda lo, hi: np.diff(indptr[lo:hi + 1]).max() < 1 << 16):
            del out[f"{name}_indptr"]
            out[f"{name}_rowlen"] = _Converted(indptr, n, np.uint16,
                                               lambda lo, hi: np.diff(indptr[lo:hi + 1]))
        release_pages(indptr)
    return out


def _compact_keys(name: str, keys: np.ndarray) -> dict:
    """Sorted int64 row keys as int32 gaps (``{name}_delta``, first gap = first key) when every
    gap fits, else as they are (checked and converted a block at a time)."""
    def gaps(lo, hi):  # keys[lo:hi] less the key before each (0 before the first)
        return (np.diff(keys[:hi], prepend=np.int64(0)) if lo == 0
                else np.diff(keys[lo - 1:hi]))

    def fits(lo, hi):
        g = gaps(lo, hi)
        return 0 <= g.min() and g.max() < 1 << 31
    if len(keys) and _all_blocks(len(keys), fits):
        release_pages(keys)
        return {f"{name}_delta": _Converted(keys, len(keys), np.int32, gaps)}
    release_pages(keys)
    return {name: keys}


def _expand_compact(arrays, where) -> "_Expanded":
    """The arrays with the compact keys and row lengths of ``_compact_csr``/``_compact_keys``
    expanded back to the plain names and dtypes ``_arrays_to_params`` checks (int32|int64 row
    pointers, int64 keys); a plain folder passes through unchanged. float32 values and uint16
    columns stay as they are: they are checked as stored and widened per group on first use
    (``params.LazyCSRs``; the compiled scorer never widens them).

    The names and stored dtypes are checked here; each expanded array is made when it is read
    (``_Expanded``), so a check that reads one group at a time holds one group's expansion."""
    plain = {}  # plain name -> (compact name, how)
    for name in list(arrays):
        a = arrays[name]
        if name.endswith("_delta") and name.startswith("keys"):
            p = name[:-len("_delta")]
            if p in arrays or a.dtype.str != "<i4" or a.ndim != 1:
                raise ModelFormatError(f"{where}: {name!r} must be the int32 gaps of the "
                                       f"absent {p!r}; {_FIX}")
            plain[p] = (name, "keys")
        elif name.endswith("_rowlen") and name.startswith("S"):
            p = name[:-len("_rowlen")] + "_indptr"
            if p in arrays or a.dtype.str != "<u2" or a.ndim != 1:
                raise ModelFormatError(f"{where}: {name!r} must be the uint16 row lengths of "
                                       f"the absent {p!r}; {_FIX}")
            plain[p] = (name, "indptr")
    return _Expanded(arrays, plain)


class _Expanded(Mapping):
    """``arrays`` with each compact array under its plain name, expanded on every read (not
    kept: the reader holds it as long as it needs it)."""

    def __init__(self, arrays, plain: dict):
        self.arrays, self.plain = arrays, plain
        self.names = [n for n in arrays if n not in {c for c, _ in plain.values()}]
        self.names += list(plain)

    def __iter__(self):
        return iter(self.names)

    def __len__(self):
        return len(self.names)

    def __contains__(self, name):
        return name in self.plain or (name in self.arrays and name in self.names)

    def __getitem__(self, name):
        if name not in self.plain:
            if name not in self.names:
                raise KeyError(name)
            return self.arrays[name]
        cname, how = self.plain[name]
        a = self.arrays[cname]
        if how == "keys":
            return np.cumsum(a, dtype=np.int64)
        # summed straight into the final dtype: no int64 copy to narrow (fresh pages cost)
        wide = int(a.sum(dtype=np.int64)) >= 1 << 31
        indptr = np.zeros(len(a) + 1, dtype=np.int64 if wide else np.int32)
        np.cumsum(a, out=indptr[1:])
        return indptr


def groups_from_names(names: list, arrays, where="params.npz") -> list:
    """Feature groups from their manifest names, by the kinds registry (``kinds.from_name``);
    kinds rebuilt with stored tables take them from ``arrays``, each checked here first:
    ``clusters{C}`` int64 (V,), one cluster id per token in ``[0, C)``; ``piece_bytes`` int64
    (V,) (``linepos.check_bytes_table``). Raises ``ModelFormatError`` naming the first bad name
    or table."""
    groups = []
    for name in names:
        try:
            tables = {t: _table(arrays, t, where) for t in kinds.tables_needed(name)}
            groups.append(kinds.from_name(name, tables))
        except ModelFormatError:
            raise
        except (ValueError, InputError) as e:
            raise ModelFormatError(f"{where}: {e}; {_FIX}") from None
    return groups


def _table(arrays, name: str, where) -> np.ndarray:
    """A stored table named by ``kinds.tables_needed``, checked as its kind of table."""
    if name == "piece_bytes":
        return _bytes_table(arrays, where)
    if re.fullmatch(r"clusters[0-9]+", name):
        return _cluster_table(arrays, name, where)
    raise ModelFormatError(f"{where}: no check for the table {name!r}; {_FIX}")


def _cluster_table(arrays, name: str, where) -> np.ndarray:
    t = _array(arrays, name, ("<i8",), 1, where)
    V = len(arrays["q"]) if "q" in arrays else len(arrays["b"]) if "b" in arrays else len(t)
    if len(t) != V or len(t) == 0 or t.min() < 0:
        raise ModelFormatError(f"{where}: {name!r} must hold {V} cluster ids >= 0 (one per "
                               f"token), got {len(t)} ids from {t.min() if len(t) else None}; {_FIX}")
    return t


def _bytes_table(arrays, where) -> np.ndarray:
    t = _array(arrays, "piece_bytes", ("<i8",), 1, where)
    V = len(arrays["q"]) if "q" in arrays else len(arrays["b"]) if "b" in arrays else len(t)
    try:
        return check_bytes_table(t, V)
    except ValueError as e:
        raise ModelFormatError(f"{where}: {e}; {_FIX}") from None


def _array(arrays, name, dtypes, ndim, where):
    if name not in arrays:
        raise ModelFormatError(f"{where}: missing array {name!r}; {_FIX}")
    a = arrays[name]
    if a.dtype.str not in dtypes or a.ndim != ndim:
        raise ModelFormatError(f"{where}: array {name!r} is {a.dtype.str} with {a.ndim} dims, "
                               f"expected {'|'.join(dtypes)} with {ndim}; {_FIX}")
    return a


def _blocks(a: np.ndarray, pairs: bool = False, block: int = 1 << 20):
    """The 1-d array ``a`` in blocks (overlapping by one element with ``pairs``, for checks on
    neighbours), each released from the RSS once the caller has checked it: validating a
    memory-mapped model makes no array-sized temporaries and leaves nothing resident."""
    for i in range(0, max(len(a) - pairs, 1 if len(a) else 0), block):
        x = a[i:i + block + pairs]
        yield x
        release_pages(x)


def _finite(a, name, where):
    if not all(np.isfinite(x).all() for x in _blocks(a.reshape(-1))):
        raise ModelFormatError(f"{where}: array {name!r} holds NaN or infinite values; {_FIX}")


def _sorted_in_rows(indices: np.ndarray, indptr: np.ndarray, block: int = 1 << 16) -> bool:
    """Every place where ``indices`` does not increase is a row start (``indptr`` monotone).
    Checked in blocks that stay in cache: no nnz-sized temporaries on a memory-mapped model."""
    n = len(indices)
    for a in range(0, n - 1, block):
        b = min(a + block, n - 1)  # compares entries a+1..b with their predecessors
        lo, hi = np.searchsorted(indptr, np.array([a + 1, b + 1], dtype=indptr.dtype))
        row_start = np.zeros(b - a, dtype=bool)
        row_start[indptr[lo:hi] - (a + 1)] = True
        x = indices[a:b + 1]
        if not ((x[1:] > x[:-1]) | row_start).all():
            return False
        release_pages(x)
    return True


def _check_csr(arrays, g: int, n_rows: int, V: int, where) -> StoredCSR:
    """The weights of group g as stored (float32|float64 values, uint16 columns or columns of
    the row pointers' dtype int32|int64), after checking everything SciPy's C code and the
    compiled scorer would trust; widened to a float64 CSR only when first used."""
    data = _array(arrays, f"S{g}_data", ("<f8", "<f4"), 1, where)
    indices = _array(arrays, f"S{g}_indices", ("<i4", "<i8", "<u2"), 1, where)
    indptr = _array(arrays, f"S{g}_indptr", ("<i4", "<i8") if indices.dtype.str == "<u2"
                    else (indices.dtype.str,), 1, where)
    shape = _array(arrays, f"S{g}_shape", ("<i8",), 1, where)

    def bad(what):
        return ModelFormatError(f"{where}: group {g}: {what}; {_FIX}")

    if shape.tolist() != [n_rows, V]:
        raise bad(f"shape {shape.tolist()} but the manifest implies {[n_rows, V]}")
    if len(indptr) != n_rows + 1 or len(indices) != len(data):
        raise bad(f"indptr has {len(indptr)} entries for {n_rows} rows, or indices "
                  f"({len(indices)}) and data ({len(data)}) differ in length")
    if (indptr[0] != 0 or indptr[-1] != len(data)
            or not all((np.diff(x) >= 0).all() for x in _blocks(indptr, pairs=True))):
        raise bad("indptr is not monotone from 0 to the number of stored values")
    if not all(x.min() >= 0 and x.max() < V for x in _blocks(indices)):
        raise bad(f"column indices outside [0, {V})")
    if not _sorted_in_rows(indices, indptr):
        raise bad("column indices not sorted and unique within rows")
    _finite(data, f"S{g}_data", where)
    release_pages(data, indices, indptr)  # checked: a mapped group leaves the RSS
    return StoredCSR(data, indices, indptr, (n_rows, V))


def arrays_to_params(kind: str, groups: list, arrays, info: dict, where="params.npz",
                     lambdas=None, check_only: bool = False):
    """Parameters from checked arrays; raises ``ModelFormatError`` naming the first problem.

    ``groups``: ``Window``/``Suffix`` objects; ``lambdas`` (optional): the manifest's copy.
    ``check_only``: run every check, one group at a time, keeping nothing (returns None): the
    expanded keys and row pointers of one group are held at a time, not the model's.
    """
    try:
        return _arrays_to_params(kind, groups, _expand_compact(arrays, where), info, where,
                                 lambdas, check_only)
    finally:  # validation read every mapped array once: drop those pages from the RSS
        release_pages(*arrays.values())


def _arrays_to_params(kind, groups, arrays, info, where, lambdas, check_only=False):
    """The params of a folder's ``arrays`` (name -> array) after every check: names, dtypes,
    shapes, key order and range, finiteness (``ModelFormatError`` naming the first problem)."""
    G = len(groups)
    try:
        check_suffix_chain(groups)
    except InputError as e:
        raise ModelFormatError(f"{where}: {e}") from None
    expected = _expected_arrays(kind, groups, arrays)
    extra = sorted(set(arrays) - expected)
    if extra:
        raise ModelFormatError(f"{where}: arrays {extra} do not belong to a {kind} model with "
                               f"{G} groups; {_FIX}")
    if kind == "sparse":
        q = _array(arrays, "q", ("<f8",), 1, where)
        V = len(q)
        if not (np.isfinite(q).all() and (q > 0).all() and abs(q.sum() - 1.0) < 1e-6):
            raise ModelFormatError(f"{where}: 'q' must be finite, > 0 and sum to 1; {_FIX}")
        lam = _array(arrays, "lambdas", ("<f8",), 1, where)
        if len(lam) != G or not (np.isfinite(lam).all() and (lam >= 0).all()):
            raise ModelFormatError(f"{where}: 'lambdas' must be {G} finite values >= 0 (one per "
                                   f"group), got {lam.tolist()}; {_FIX}")
        if lambdas is not None and list(lambdas) != lam.tolist():
            raise ModelFormatError(f"{where}: lambdas differ from the manifest's; {_FIX}")
    else:
        b = _array(arrays, "b", ("<f4", "<f8"), 1, where)
        V = len(b)
        _finite(b, "b", where)
    keys, n_keys = _checked_keys(arrays, groups, expected, V, where, keep=not check_only)
    rows = [V if n is None else n for n in n_keys]
    if kind == "sparse":
        S = []
        for g in range(G):  # check_only: each group's arrays go once checked
            csr = _check_csr(arrays, g, rows[g], V, where)
            if not check_only:
                S.append(csr)
            del csr
        loggamma = _checked_loggamma(arrays, expected, rows, where)
        if check_only:
            return None
        S = LazyCSRs(S)
        if loggamma:
            info = {**info, "loggamma": loggamma}
        return SparseParams(groups, q, S, keys, lam, info)
    W = []
    for g in range(G):
        w = _array(arrays, f"W{g}", ("<f4", "<f8"), 2, where)
        if w.shape != (rows[g], V):
            raise ModelFormatError(f"{where}: 'W{g}' has shape {w.shape}, expected "
                                   f"{(rows[g], V)}; {_FIX}")
        _finite(w, f"W{g}", where)
        W.append(w)
    return None if check_only else DenseParams(groups, W, b, keys, info)


def _expected_arrays(kind, groups, arrays) -> set:
    """The array names a ``kind`` ("sparse" or "dense") folder with ``groups`` may hold."""
    expected = {"q", "lambdas"} if kind == "sparse" else {"b"}
    for g, group in enumerate(groups):
        expected |= ({f"S{g}_data", f"S{g}_indices", f"S{g}_indptr", f"S{g}_shape"}
                     if kind == "sparse" else {f"W{g}"})
        if f"keys{g}" in arrays or isinstance(group, Suffix):
            expected.add(f"keys{g}")
        if kind == "sparse" and isinstance(group, Suffix) and f"G{g}" in arrays:
            expected.add(f"G{g}")
    return expected | set(kinds.group_tables(groups))  # clusters{C}, piece_bytes (kinds.py)


def _checked_keys(arrays, groups, expected, V: int, where, keep: bool = True):
    """Per group its keys (int64, sorted, unique, in range) or None (rows are token ids), and
    per group its number of keys (None for None); ``keep=False``: every key list is checked
    and let go (the keys come back as None)."""
    keys, n_keys = [], []
    for g, group in enumerate(groups):
        k = None
        if f"keys{g}" in expected:
            k = _array(arrays, f"keys{g}", ("<i8",), 1, where)
            # chained ids: Suffix(m) keys are parent_row * V + token, parent = a Suffix(m-1) row
            parent = [n_keys[h] for h, x in enumerate(groups[:g])
                      if isinstance(x, Suffix) and isinstance(group, Suffix) and x.m == group.m - 1]
            # skip-gram and cluster keys pack several tokens / clusters (features.py, clusters.py)
            limit = V * parent[0] if parent else \
                min(group.key_limit(V), 2 ** 63 - 1) if hasattr(group, "key_limit") else V
            if len(k) and (k[0] < 0 or k[-1] >= limit
                           or not all((np.diff(x) > 0).all() for x in _blocks(k, pairs=True))):
                raise ModelFormatError(f"{where}: 'keys{g}' must be sorted, unique and in "
                                       f"[0, {limit}); {_FIX}")
        keys.append(k if keep else None)
        n_keys.append(None if k is None else len(k))
        del k
    return keys, n_keys


def _checked_loggamma(arrays, expected, rows: list, where) -> list:
    """The stored log back-off weights ``G{g}`` (one per row, finite, <= 0) of the groups that
    have them (a sparse MKN model's suffix groups), in group order."""
    loggamma = []
    for g in range(len(rows)):
        if f"G{g}" in expected:
            lg = _array(arrays, f"G{g}", ("<f8",), 1, where)
            if len(lg) != rows[g] or not all((np.isfinite(x) & (x <= 1e-9)).all()
                                             for x in _blocks(lg)):
                raise ModelFormatError(f"{where}: 'G{g}' must be {rows[g]} finite log "
                                       f"back-off weights <= 0; {_FIX}")
            loggamma.append(lg)
    return loggamma
