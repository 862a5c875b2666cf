"""Compiled kernels as native object code cached on disk, called through ctypes without numba.

Input: a kernel named by its module and name (``kernel("fastscore", "union_products_u2_i4")``);
the module (numba source: ``fastscore.py``, ``fastkeys.py``, ``ngram/score.py``,
``wordcache.py``, ``io/jsonrows.py``, ``fastnll.py``; ``SOURCES``) has ``native_kernel(name) ->
(cfunc, argspec)``: a numba ``cfunc`` of C signature ``void(int64 *blk)`` reading its arguments
from ``blk`` (``jitargs.py``) and, per argument, ``"f8:1"`` (dtype, ndim) or ``"int"``.
Output: a ``Kernel`` to call with those arguments (arrays checked for dtype, ndim and
C-contiguity, then passed by address: no copies), or None without numba (callers then take
their numpy route).

Why: numba's import and its first call of any compiled function (its typing and target
registries, and the ``scipy.linalg`` it imports for BLAS) cost ~0.4 CPU s per process, about a
fifth of ``lmkit eval`` of the default model (docs/speed.md "Eval, third pass") and a third of a
fresh ``lmkit score`` of an MKN model ("Start-up of `lmkit score`"). The first time
a kernel is needed numba compiles it as usual; its object code is then written to the cache
(``cache_dir()``: ``LMKIT_NATIVE_CACHE``, else ``__pycache__/native`` beside this file, else
``~/.cache/lmkit/native``) under a key of the sources it was compiled from (this module,
``jitargs.py``, the kernel's module and what it inlines), numba's and llvmlite's versions and
the host CPU (name and features: the code is compiled for it). Later processes load that file
with llvmlite alone (~0.04 s: no numba import). The object's external symbols are listed at
build time and must be CPython's API (the cfunc wrapper's error path), libc's, or numba's error
helpers (``numba_gil_*``, ``NRT_MemInfo_call_dtor``: reached only if a kernel raises, and ours
cannot: no allocation, no bounds checks, numpy's error model); those are bound to ``abort``
unless numba has registered them, so a kernel that raised would stop the process loudly, not
corrupt it. Anything else and the kernel runs from numba in-process, uncached.
"""
from __future__ import annotations

import ctypes
import hashlib
import importlib
import importlib.util
import json
import os
import struct
import threading
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
# the source files whose text a kernel's object code depends on, per kernel module
SOURCES = {"fastscore": ["fastscore.py"], "fastkeys": ["fastkeys.py", "sortedsearch.py"],
           "ngram.score": ["ngram/score.py", "sortedsearch.py"], "wordcache": ["wordcache.py"],
           "io.jsonrows": ["io/jsonrows.py"], "fastnll": ["fastnll.py"]}
# numba helpers that only a raised exception reaches (the cfunc wrapper's error path, the
# release of memory that kernels which allocate nothing never hold)
ERROR_HELPERS = ("numba_gil_ensure", "numba_gil_release", "numba_do_raise", "numba_unpickle",
                 "numba_runtime_build_excinfo_struct", "NRT_MemInfo_call_dtor", "NRT_Free")
FORMAT = "lmkit-native 1"

_LOCK = threading.RLock()
_KERNELS: dict = {}
_READY = False  # LLVM's native target initialised (once per process)
USE_CACHE = True  # False: compile in-process with numba every time (tests compare the two)


class Kernel:
    """One compiled kernel: ``kernel(*args)`` with arrays and ints as its ``argspec`` says."""

    def __init__(self, name: str, address: int, argspec: list, keep=None,
                 from_file: bool = False):
        self.name, self.argspec, self._keep = name, list(argspec), keep
        self.from_file = from_file  # loaded from the object cache (else compiled by numba)
        self._fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(address)  # releases the GIL
        self._specs = [None if s == "int" else (np.dtype(s.split(":")[0]), int(s.split(":")[1]))
                       for s in self.argspec]

    def __call__(self, *args) -> None:
        if len(args) != len(self._specs):
            raise TypeError(f"{self.name} takes {len(self._specs)} arguments, got {len(args)}")
        blk = np.zeros(3 * len(args), dtype=np.int64)
        for i, (a, spec) in enumerate(zip(args, self._specs)):
            if spec is None:
                blk[3 * i] = int(a)
                continue
            dtype, ndim = spec
            if not (isinstance(a, np.ndarray) and a.dtype == dtype and a.ndim == ndim
                    and a.flags.c_contiguous):
                got = (a.dtype, a.ndim) if isinstance(a, np.ndarray) else type(a).__name__
                raise TypeError(f"{self.name}: argument {i} must be a C-contiguous {dtype} "
                                f"array of {ndim} dimensions, got {got}")
            blk[3 * i] = a.__array_interface__["data"][0]
            blk[3 * i + 1: 3 * i + 1 + ndim] = a.shape
        self._fn(blk.ctypes.data)


def kernel(module: str, name: str):
    """The ``Kernel`` ``name`` of ``lmkit.<module>`` (built once per process), or None when
    numba is not installed."""
    with _LOCK:
        key = (module, name)
        if key not in _KERNELS:
            _KERNELS[key] = _load_or_build(module, name)
        return _KERNELS[key]


def kernels(module: str, names) -> dict | None:
    """``{name: Kernel}`` for every name of ``names`` in ``lmkit.<module>``, or None if one of
    them cannot be had (no numba): callers then take their numpy route for all of them."""
    out = {name: kernel(module, name) for name in names}
    return None if None in out.values() else out


def ready() -> bool:
    """Whether a kernel already runs in this process (so one more costs only its object file:
    callers that would not pay for the first one, e.g. ``lmkit score``'s rows, check this).
    Without the lock: a thread compiling a kernel does not hold up one that only asks."""
    return any(k is not None for k in list(_KERNELS.values()))


def cache_dir() -> Path | None:
    """Where object code is kept: the first writable of ``$LMKIT_NATIVE_CACHE``,
    ``lmkit/__pycache__/native`` and ``~/.cache/lmkit/native`` (None: none is)."""
    env = os.environ.get("LMKIT_NATIVE_CACHE")
    cands = [Path(env)] if env else [HERE / "__pycache__" / "native",
                                     Path.home() / ".cache" / "lmkit" / "native"]
    for d in cands:
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(d, os.W_OK | os.X_OK):
            return d
    return None


def _version_text(package: str) -> bytes | None:
    """The installed ``package``'s version file (found without importing it), or None."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.origin:
        return None
    for f in ("_version.py", "__init__.py"):
        p = Path(spec.origin).parent / f
        if p.is_file():
            return p.read_bytes()
    return None


def _cache_key(module: str, name: str) -> str | None:
    numba_v = _version_text("numba")
    if numba_v is None:
        return None
    import llvmlite
    import llvmlite.binding as llvm
    h = hashlib.sha256(FORMAT.encode())
    for f in ["native.py", "jitargs.py", *SOURCES[module]]:
        h.update((HERE / f).read_bytes())
    h.update(numba_v)
    h.update(f"{llvmlite.__version__}|{llvm.get_host_cpu_name()}|"
             f"{llvm.get_host_cpu_features().flatten()}|{module}|{name}".encode())
    return h.hexdigest()[:24]


def _load_or_build(module: str, name: str):
    try:
        key = _cache_key(module, name)
    except ImportError:
        return None
    if key is None:
        return None
    folder = cache_dir() if USE_CACHE else None
    path = folder / f"{module}.{name}.{key}.o" if folder else None
    if path is not None and path.is_file():
        loaded = _load(path, name)
        if loaded is not None:
            return loaded
    try:
        mod = importlib.import_module(f"lmkit.{module}")
    except ImportError:  # numba is optional (pip install lmkit[fast])
        return None
    cf, argspec = mod.native_kernel(name)
    if path is not None:
        try:  # numba's codegen internals (0.59-0.68): another numba runs uncached, not broken
            obj = cf._library._codegen._tm.emit_object(cf._library._final_module)
        except AttributeError:
            obj = b""
        imports = undefined_symbols(obj)
        if imports is not None and _loadable(imports):
            header = json.dumps({"format": FORMAT, "symbol": cf.native_name, "args": argspec,
                                 "imports": imports,
                                 "sha256": hashlib.sha256(obj).hexdigest()}).encode()
            _write_atomic(path, header + b"\n" + obj)
    return Kernel(name, cf.address, argspec, keep=cf)


def undefined_symbols(obj: bytes) -> list | None:
    """The names an ELF64 little-endian object file ``obj`` needs from outside (its symbol
    table's undefined entries), or None if it is not one (then nothing is cached)."""
    if obj[:6] != b"\x7fELF\x02\x01":
        return None
    shoff, = struct.unpack_from("<Q", obj, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", obj, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", obj, shoff + i * shentsize)
                for i in range(shnum)]
    names = set()
    for _, kind, _, _, off, size, link, _, _, entsize in sections:
        if kind != 2:  # SHT_SYMTAB
            continue
        stroff = sections[link][4]
        for e in range(off, off + size, entsize):
            st_name, _, _, st_shndx = struct.unpack_from("<IBBH", obj, e)
            if st_name and st_shndx == 0:  # SHN_UNDEF
                names.add(obj[stroff + st_name: obj.index(b"\0", stroff + st_name)].decode())
    return sorted(names)


def _loadable(imports: list) -> bool:
    libc = ctypes.CDLL(None)
    return all(n.startswith(("Py", "_Py")) or n in ERROR_HELPERS or hasattr(libc, n)
               for n in imports)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``path`` by temp-and-rename and remove the same kernel's files of other keys (older
    sources or versions: one file per kernel stays)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
        prefix = path.name.rsplit(".", 2)[0] + "."
        for old in path.parent.glob(prefix + "*.o"):
            if old != path and old.name.count(".") == path.name.count("."):
                old.unlink(missing_ok=True)
    except OSError:  # a cache we cannot write is only a slower next start
        tmp.unlink(missing_ok=True)


def _load(path: Path, name: str):
    """The kernel in the object file ``path`` (header line: format, symbol, arguments, imports and
    the object's sha256; then the ELF object), or None if it is unusable."""
    try:
        raw = path.read_bytes()
        header, obj = raw.split(b"\n", 1)
        meta = json.loads(header)
        if meta.get("format") != FORMAT or not _loadable(meta["imports"]):
            return None
        # a truncated or damaged file (a full disk, a crash elsewhere) is built again, never
        # handed to LLVM's loader
        if hashlib.sha256(obj).hexdigest() != meta.get("sha256"):
            return None
    except (OSError, ValueError, KeyError):
        return None
    import llvmlite.binding as llvm
    engine = _engine()
    _bind(meta["imports"])
    engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
    engine.finalize_object()
    address = engine.get_function_address(meta["symbol"])
    if not address:
        return None
    return Kernel(name, address, meta["args"], keep=engine, from_file=True)


def _engine():
    """A new MCJIT engine (an empty module of its own) for ONE loaded object: kernels compiled
    in different processes can define the same symbol names (numba numbers its functions per
    process: ``product_rowsB3v12`` in two objects), and one engine for all would resolve the
    second kernel's symbol to the first's code. The kernel keeps its engine alive."""
    global _READY
    import llvmlite.binding as llvm
    if not _READY:
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        _READY = True
    # a target machine per engine: the engine takes ownership of it
    tm = llvm.Target.from_default_triple().create_target_machine()
    return llvm.create_mcjit_compiler(llvm.parse_assembly(""), tm)


def _bind(imports: list) -> None:
    """Give LLVM the address of every external symbol it cannot find yet (numba, when loaded,
    registers its own and overrides ours): CPython's exception objects as numba refers to them
    (the object's address), process symbols by ``dlsym``, numba's error helpers ``abort``."""
    import builtins

    import llvmlite.binding as llvm
    libc = ctypes.CDLL(None)
    for n in imports:
        if llvm.address_of_symbol(n):
            continue
        if n.startswith("PyExc_") and isinstance(getattr(builtins, n[6:], None), type):
            addr = id(getattr(builtins, n[6:]))
        elif hasattr(libc, n):
            addr = ctypes.cast(getattr(libc, n), ctypes.c_void_p).value
        else:  # ERROR_HELPERS (checked by _loadable)
            addr = ctypes.cast(libc.abort, ctypes.c_void_p).value
        llvm.add_symbol(n, addr)
