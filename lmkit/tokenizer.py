"""Subword tokenizer: a byte-fallback SentencePiece model (BPE or unigram) trained on text lines.

Input: an iterable of ``str`` lines (the train split, one sequence per line).
Output: a ``Tokenizer`` holding a serialized SentencePiece ``ModelProto`` (``model_proto``,
``sha256``); ``encode(str) -> list[int]`` ids in ``[0, vocab_size)`` and back with ``decode``.
``save(prefix)`` writes ``PREFIX.model`` (the ModelProto, loadable by any SentencePiece tool)
and ``PREFIX.vocab`` (``piece<TAB>score`` lines, for people only; ``load`` reads the .model).

Fixed ids: ``<unk>`` = 0, ``<s>`` (BOS) = 1, ``</s>`` (EOS) = 2, no pad piece; ids 3..258 are
the 256 byte pieces ``<0x00>``..``<0xFF>``, learned pieces follow. ``encode`` never adds BOS/EOS
(callers do), and with byte fallback it never emits ``<unk>``.

Round-trip rule: ``decode(encode(x)) == x`` for every ``str`` without lone surrogates
(newlines, tabs, control characters, runs of spaces, NFC and NFD forms alike). To get it the
model normalizes nothing: ``normalization_rule_name="identity"`` (no NFKC, so NFD stays NFD
and "ﬁ" stays "ﬁ"), ``add_dummy_prefix=False`` (no space invented at the start),
``remove_extra_whitespaces=False`` (spaces kept as they are) and ``character_coverage=1.0``
with ``byte_fallback=True`` (characters missing from the vocabulary become UTF-8 byte pieces).
SentencePiece writes a space as "▁" (U+2581) and decodes every "▁" piece back to a space, so
``encode`` sends a literal U+2581 in the text through its three byte pieces, which decode to
U+2581 itself.

Piece format (``encode_pieces``/``decode_pieces``, ``lmkit tokenize --output-format piece``):
pieces are separated by spaces, and inside a piece ``\\`` stands for a backslash, ``\\t``,
``\\n``, ``\\r`` for tab, newline and carriage return, and ``\\uXXXX`` for any other
character Python's ``str.isspace`` accepts (NBSP U+00A0, ideographic space U+3000, ...), so
``decode_pieces(line.split())`` gives back every text exactly (``escape_piece``).

Training is deterministic for a fixed ``seed``: when the corpus has more than
``input_sentence_size`` non-empty lines, lmkit draws the sample itself (seeded reservoir
sampling; SentencePiece 0.2.x's own sampler ignores its seed), and training runs on one thread.
Empty lines are skipped; lines over ``MAX_SENTENCE_BYTES`` UTF-8 bytes are truncated (at a
character boundary) for training only. ``encode`` takes text of any length.
"""

import hashlib
import io
import os
import pathlib
import random
import re
from itertools import chain
from typing import Iterable, Sequence

import numpy as np
import sentencepiece as spm

from .config import TokenizerConfig
from .errors import InputError, OptionError
from .io.files import atomic_write, check_output_writable
from .io.readfile import read_regular

UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, -1
MAX_SENTENCE_BYTES = 1 << 16
MAX_MODEL_BYTES = 256 << 20  # a .model file larger than this is not a tokenizer lmkit wrote
MODEL_TYPES = ("bpe", "unigram")
NORMALIZATION = "identity"
MIN_VOCAB_SIZE = 256 + 3 + 1  # byte pieces + unk/bos/eos + at least one character
_SPACE_SYMBOL = "\u2581"
_TOO_HIGH = re.compile(r"[Vv]ocabulary size (?:is )?too high \((\d+)\)\. "
                       r"Please set it to a value <= (\d+)")
_TOO_LOW = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")


def _training_sample(lines: Iterable[str], size: int, seed: int) -> list[str]:
    """Non-empty ``lines`` (overlong ones truncated), or a seeded uniform sample of ``size``."""
    rng = random.Random(seed)
    sample, n = [], 0
    for line in lines:
        if not isinstance(line, str):
            raise InputError(f"tokenizer training lines must be str, got {type(line).__name__}")
        if not line:
            continue
        if len(line) > MAX_SENTENCE_BYTES // 4:  # only then can it exceed the byte limit
            line = line.encode("utf-8")[:MAX_SENTENCE_BYTES].decode("utf-8", errors="ignore")
        n += 1
        if not size or len(sample) < size:
            sample.append(line)
        elif (j := rng.randrange(n)) < size:
            sample[j] = line
    if not sample:
        raise InputError("no non-empty lines to train the tokenizer on; "
                         "pass a corpus with text in its train split")
    return sample


def _train_proto(lines, vocab_size, model_type, seed, input_sentence_size) -> bytes:
    """Train SentencePiece on ``lines`` and return the serialized ModelProto."""
    sample = _training_sample(lines, input_sentence_size, seed)
    writer = io.BytesIO()
    spm.set_random_generator_seed(seed)  # for any randomness left inside SentencePiece
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sample), model_writer=writer,
            vocab_size=vocab_size, model_type=model_type, byte_fallback=True,
            character_coverage=1.0, normalization_rule_name=NORMALIZATION,
            add_dummy_prefix=False, remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
            pad_id=PAD_ID, input_sentence_size=0,  # 0: train on the whole sample
            max_sentence_length=MAX_SENTENCE_BYTES,
            num_threads=1, minloglevel=2)
    except RuntimeError as e:
        msg = str(e)
        if m := _TOO_HIGH.search(msg):
            raise OptionError(
                f"vocab_size {vocab_size} is too large for this text: it supports at most "
                f"{m[2]}; pass vocab_size {m[2]} or less, or use more text") from None
        if m := _TOO_LOW.search(msg):
            raise OptionError(
                f"vocab_size {vocab_size} is too small for this text: it needs at least {m[2]} "
                f"(259 byte and special pieces + {int(m[2]) - 259} distinct characters); "
                f"pass vocab_size {m[2]} or more") from None
        raise
    return writer.getvalue()


def _fields(buf: bytes):
    """Yield ``(field_number, value)`` of a protobuf message; value is int or bytes."""
    def varint(pos):
        result = shift = 0
        while True:
            b = buf[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result, pos
            shift += 7

    pos = 0
    while pos < len(buf):
        key, pos = varint(pos)
        wire = key & 7
        if wire == 0:
            value, pos = varint(pos)
        elif wire == 2:
            n, pos = varint(pos)
            value, pos = buf[pos:pos + n], pos + n
        elif wire in (1, 5):  # fixed64, fixed32
            value, pos = buf[pos:pos + (8 if wire == 1 else 4)], pos + (8 if wire == 1 else 4)
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield key >> 3, value


def _options_from_proto(proto: bytes) -> dict | None:
    """Read the training options stored in a ModelProto's trainer_spec; None if unreadable.

    ``seed`` and ``input_sentence_size`` come back as None: the proto stores neither (lmkit
    samples the lines itself and hands SentencePiece the whole sample).
    """
    try:
        top = {f: v for f, v in _fields(proto) if f in (2, 3)}  # trainer_spec, normalizer_spec
        trainer = dict(_fields(top[2]))
        normalizer = dict(_fields(top.get(3, b"")))
    except (ValueError, IndexError, KeyError):
        return None
    model_types = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}
    return {"vocab_size": trainer.get(4, 8000), "model_type": model_types.get(trainer.get(3, 1)),
            "seed": None, "input_sentence_size": None,
            "normalization": normalizer.get(1, b"nmt_nfkc").decode("utf-8", errors="replace")}


class Tokenizer:
    """A loaded SentencePiece model; build one with ``train`` or ``load``."""

    def __init__(self, model_proto: bytes):
        self.model_proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(self.model_proto)
        except RuntimeError as e:
            reason = str(e).strip().removeprefix("INTERNAL: ").rstrip(".")
            reason = "protobuf parse failed" if "ParseFromArray" in reason else reason
            raise InputError(f"not a SentencePiece model ({reason}); pass the .model file "
                             f"written by `lmkit spm-train`") from None
        if self._sp.bos_id() < 0 or self._sp.eos_id() < 0:
            raise InputError("SentencePiece model has no BOS/EOS pieces; pass the .model file "
                             "written by `lmkit spm-train`")
        self.sha256 = hashlib.sha256(self.model_proto).hexdigest()
        self.vocab_size = self._sp.get_piece_size()
        self.unk_id, self.bos_id, self.eos_id = (self._sp.unk_id(), self._sp.bos_id(),
                                                 self._sp.eos_id())
        self.options = _options_from_proto(self.model_proto)
        self._space_bytes = [self._sp.piece_to_id(f"<0x{b:02X}>") for b in _SPACE_SYMBOL.encode()]
        self._units = None  # wordcache.UnitCache, made on the first encode_flat that uses it

    def __getstate__(self):
        """Pickles carry the model, not the unit cache (a copy makes its own)."""
        return {**self.__dict__, "_units": None}

    @classmethod
    def train(cls, lines: Iterable[str], *, vocab_size: int = TokenizerConfig.vocab_size,
              model_type: str = TokenizerConfig.model_type, seed: int = TokenizerConfig.seed,
              input_sentence_size: int = TokenizerConfig.input_sentence_size) -> "Tokenizer":
        """Train on ``lines`` (the train split); see the module docstring for the settings
        (``config.TokenizerConfig``: defaults, ranges)."""
        if model_type not in MODEL_TYPES:
            raise InputError(f"model_type {model_type!r} is not one of {', '.join(MODEL_TYPES)}")
        if not isinstance(vocab_size, int) or isinstance(vocab_size, bool):
            raise OptionError(f"vocab_size must be an integer, got {vocab_size!r}; "
                              f"pass e.g. vocab_size {TokenizerConfig.vocab_size}")
        if vocab_size < MIN_VOCAB_SIZE:
            raise OptionError(f"vocab_size {vocab_size} is too small: the minimum is "
                              f"{MIN_VOCAB_SIZE} (256 byte pieces + 3 special pieces + 1); "
                              f"pass vocab_size {MIN_VOCAB_SIZE} or more")
        if not isinstance(input_sentence_size, int) or input_sentence_size < 0:
            raise InputError(f"input_sentence_size {input_sentence_size} must be an int >= 0 "
                             f"(0 means use every line)")
        if not isinstance(seed, int) or not 0 <= seed < 2**32:
            raise InputError(f"seed {seed} must be an int in [0, 2**32)")
        tok = cls(_train_proto(lines, vocab_size, model_type, seed, input_sentence_size))
        tok.options = {"vocab_size": vocab_size, "model_type": model_type, "seed": seed,
                       "input_sentence_size": input_sentence_size, "normalization": NORMALIZATION}
        return tok

    @classmethod
    def load(cls, path) -> "Tokenizer":
        """Load ``PREFIX.model`` as written by ``save`` (or by ``spm_train``)."""
        data = read_regular(path, "tokenizer model file", "pass the .model file written by "
                            "`lmkit spm-train`", limit=MAX_MODEL_BYTES)
        try:
            return cls(data)
        except InputError as e:
            raise InputError(f"{path}: {e}") from None

    def save(self, prefix) -> pathlib.Path:
        """Write ``PREFIX.model`` and ``PREFIX.vocab`` atomically; return the .model path.

        The .vocab lines are ``piece<TAB>score`` as spm_train writes them (a piece holding a
        tab or newline breaks that layout; the file is for reading, ``load`` ignores it).
        """
        prefix = pathlib.Path(prefix)
        if prefix.suffix == ".model":
            prefix = prefix.with_suffix("")
        vocab = "".join(f"{self._sp.id_to_piece(i)}\t{self._sp.get_score(i):g}\n"
                        for i in range(self.vocab_size))
        model_path = prefix.with_name(prefix.name + ".model")
        for path in (model_path, prefix.with_name(prefix.name + ".vocab")):
            check_output_writable(path)  # both, before either is written
        _write_atomic(prefix.with_name(prefix.name + ".vocab"), vocab.encode("utf-8"))
        _write_atomic(model_path, self.model_proto)
        return model_path

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``, no BOS/EOS added; ``decode(encode(" a\\tb ")) == " a\\tb "``."""
        if not isinstance(text, str):
            raise InputError(f"text must be str, got {type(text).__name__}")
        try:
            if _SPACE_SYMBOL in text:
                return self._encode_with_space_symbol(text)
            return self._sp.encode(text)
        except (RuntimeError, TypeError, UnicodeEncodeError):
            _check_text(text, "text")
            raise

    def encode_batch(self, lines: list[str], num_threads: int | None = None) -> list[list[int]]:
        """``[encode(line) for line in lines]``, encoded in parallel by SentencePiece.

        ``num_threads``: SentencePiece threads (default: every core; 1 inside worker processes).
        """
        lines = list(lines)
        try:
            out = self._sp.encode(lines, num_threads=num_threads or os.cpu_count() or 1) if lines else []
        except (RuntimeError, TypeError, UnicodeEncodeError):  # find the line to name it
            for i, line in enumerate(lines):
                _check_text(line, f"lines[{i}]")
            raise
        for i, line in enumerate(lines):
            if _SPACE_SYMBOL in line:  # rare: see the module docstring
                out[i] = self._encode_with_space_symbol(line)
        return out

    def encode_flat(self, lines: list[str], num_threads: int | None = None,
                    compiled: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``encode_batch(lines)`` flattened: ``(ids, lengths)``, int32 (T,) every line's ids in
        order and int64 (L,) each line's count.

        ``compiled``: encode through ``wordcache.UnitCache`` (each distinct whitespace unit
        encoded once, the same ids; BPE models whose encoding decomposes, ``wordcache``):
        None = when a compiled kernel already runs in this process (``native.ready``: then the
        cache's passes cost only their object files), True = load them (numba must be
        installed to compile them once), False = never.
        Otherwise, and for a batch the cache does not take, ``encode_batch``."""
        lines = list(lines)
        if self._unit_cache(compiled):
            out = self._units.encode(lines, num_threads)
            if out is not None:
                return out
        seqs = self.encode_batch(lines, num_threads=num_threads)
        lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
        ids = np.fromiter(chain.from_iterable(seqs), dtype=np.int32, count=int(lengths.sum()))
        return ids, lengths

    def _unit_cache(self, compiled: bool | None) -> bool:
        from . import native, wordcache
        if compiled is False or not wordcache.HAVE_NUMBA or (
                compiled is None and not native.ready()):
            return False
        if self._units is None:
            try:
                top = list(_fields(self.model_proto))
                pieces = [dict(_fields(v)) for f, v in top if f == 1]
                specs = {f: dict(_fields(v)) for f, v in top if f in (2, 3)}
                ok = wordcache.decomposable(
                    [(p.get(1, b"").decode("utf-8", errors="replace"), p.get(3, 1)) for p in pieces],
                    specs.get(3, {}), specs.get(2, {}))
            except (ValueError, IndexError):
                ok = False
            kernels = wordcache.kernels() if ok else None
            self._units = wordcache.UnitCache(self.encode_batch, kernels) if kernels else False
        return self._units is not False

    def _encode_with_space_symbol(self, text: str) -> list[int]:
        ids = []
        for k, part in enumerate(text.split(_SPACE_SYMBOL)):
            if k:
                ids.extend(self._space_bytes)
            ids.extend(self._sp.encode(part))
        return ids

    def encode_pieces(self, text: str) -> list[str]:
        """Pieces of ``text`` in escaped form (see ``escape_piece``), e.g. ``["▁the", "▁king"]``.

        Same split as ``encode``; ``" ".join`` of them splits back on whitespace and
        ``decode_pieces`` returns ``text`` exactly.
        """
        return [escape_piece(self._sp.id_to_piece(i)) for i in self.encode(text)]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; BOS/EOS decode to nothing. Ids outside [0, vocab_size) raise."""
        ids = [int(i) for i in ids]
        if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):
            bad = next(i for i in ids if not 0 <= i < self.vocab_size)
            raise InputError(f"token id {bad} is outside [0, {self.vocab_size}) for this "
                             f"tokenizer; pass ids produced by the same tokenizer")
        return self._sp.decode(ids)

    def decode_pieces(self, pieces: Sequence[str]) -> str:
        """Text of escaped ``pieces`` (as ``encode_pieces`` gives them); a piece not in the
        vocabulary or a bad escape raises InputError."""
        return self.decode([self.piece_to_id(unescape_piece(p)) for p in pieces])

    def id_to_piece(self, i: int) -> str:
        if not 0 <= int(i) < self.vocab_size:
            raise InputError(f"token id {i} is outside [0, {self.vocab_size}) for this tokenizer")
        return self._sp.id_to_piece(int(i))

    def piece_bytes(self) -> np.ndarray:
        """Bytes each token id adds to decoded text: int64 (V,). The UTF-8 bytes of the piece
        with the word-start mark counted as the space it stands for; byte pieces 1; BOS, EOS,
        other control pieces and unknown 0 (the line-position feature, ``linepos.py``)."""
        sp_ = self._sp
        return np.array([0 if sp_.is_control(i) or sp_.is_unknown(i) else 1 if sp_.is_byte(i)
                         else len(sp_.id_to_piece(i).replace(_SPACE_SYMBOL, " ").encode("utf-8"))
                         for i in range(self.vocab_size)], dtype=np.int64)

    def piece_to_id(self, piece: str) -> int:
        i = self._sp.piece_to_id(piece)
        if i == self.unk_id and piece != self._sp.id_to_piece(self.unk_id):
            raise InputError(f"piece {piece!r} is not in the tokenizer vocabulary")
        return i

    def __repr__(self):
        return f"Tokenizer(vocab_size={self.vocab_size}, sha256={self.sha256[:12]})"


def _check_text(text, name: str) -> None:
    """InputError naming ``name`` if ``text`` is not a str SentencePiece can take."""
    if not isinstance(text, str):
        raise InputError(f"{name} must be str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(f"{name}: character {e.start} is a lone surrogate "
                         f"({text[e.start]!r}), not text; decode the input properly "
                         "(e.g. errors='replace')") from None


# Piece format of `lmkit spm-encode --output-format piece`: pieces are joined by spaces and
# read back with str.split(), so no piece may hold a character str.split() splits on.
_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_UNESCAPE = re.compile(r"\\(?:(\\)|([tnr])|u([0-9a-fA-F]{4}))|(\\)")


def escape_piece(piece: str) -> str:
    """A piece with no whitespace in it: ``\\`` -> ``\\\\``, tab/newline/CR -> ``\\t``/``\\n``/
    ``\\r``, any other whitespace character (NBSP, U+3000, ...) -> ``\\uXXXX``.

    Example: ``escape_piece("a\\u00a0b") == "a\\\\u00a0b"``; ``unescape_piece`` inverts it.
    """
    if "\\" not in piece and not any(c.isspace() for c in piece):
        return piece
    return "".join(_ESCAPES.get(c) or (f"\\u{ord(c):04x}" if c.isspace() else c) for c in piece)


def unescape_piece(piece: str) -> str:
    """Inverse of ``escape_piece``; a backslash not starting a valid escape raises InputError."""
    if "\\" not in piece:
        return piece

    def sub(m):
        if m[4]:
            raise InputError(f"piece {piece!r}: a backslash must start \\\\, \\t, \\n, \\r "
                             "or \\uXXXX (the escapes of the piece format)")
        if m[1]:
            return "\\"
        return {"t": "\t", "n": "\n", "r": "\r"}[m[2]] if m[2] else chr(int(m[3], 16))
    return _UNESCAPE.sub(sub, piece)


def _write_atomic(path: pathlib.Path, data: bytes):
    """Write ``data`` to ``path`` atomically (``io.files.atomic_write``: temp file + rename)."""
    atomic_write(path, data)
