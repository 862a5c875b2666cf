"""io/jsonrows.py: the compiled rows are byte for byte the f-string rows (``repr`` of every
float), on random floats of every scale, on floats with few mantissa bits (exact ties between
two shortest decimals), at binade boundaries (the narrower gap below a power of two), on
short decimals and their neighbours, and with rows outside the exact domain spliced in."""
import numpy as np
import pytest

from lmkit.io import jsonrows

pytest.importorskip("numba")


def reference(tok, nll, ppl, bpb, numbers=None, heads=None) -> bytes:
    heads = [f'{{"index": {n}' for n in numbers] if heads is None else heads
    return "".join(jsonrows.py_row(h, t, x, p, b) for h, t, x, p, b in
                   zip(heads, list(tok), list(nll), list(ppl), list(bpb))).encode("utf-8")


def check(values, rng, heads=None):
    v = np.asarray(values, dtype=np.float64)
    tok = rng.integers(1, 10 ** 7, len(v))
    numbers = rng.integers(0, 10 ** 12, len(v))
    args = (tok, v, v[::-1].copy(), rng.permutation(v))
    got = jsonrows.rows(*args, numbers=numbers, heads=heads)
    want = reference(*(a.tolist() for a in args), numbers=numbers.tolist(), heads=heads)
    if got != want:  # name the first differing row, not two megabytes of bytes
        bad = next((g, w) for g, w in zip(got.split(b"\n"), want.split(b"\n")) if g != w)
        pytest.fail(f"row differs: {bad}")


def few_bit_floats():
    """m 2^e for small m: exact binary fractions, many of them ties between two shortest
    decimals; and each power of two's neighbours (the gap below it is half as wide)."""
    out = []
    for e in range(-64, 56):
        out += [m * 2.0 ** e for m in range(1, 64)]
        out += [np.nextafter(2.0 ** e, 0), np.nextafter(2.0 ** e, np.inf)]
    return out


def test_random_floats_of_every_scale_equal_repr():
    rng = np.random.default_rng(0)
    for lo, hi in [(1e-3, 1), (1, 1e3), (1e3, 1e16), (1e-8, 1e-3)]:
        check(np.exp(rng.uniform(np.log(lo), np.log(hi), 30_000)), rng)
    bits = rng.integers(0, 2 ** 52, 60_000) | (rng.integers(1075 - 60, 1075 + 3, 60_000) << 52)
    check(bits.view(np.float64), rng)


def test_ties_and_binade_boundaries_equal_repr():
    check(few_bit_floats(), np.random.default_rng(1))


def test_short_decimals_and_their_neighbours_equal_repr():
    rng = np.random.default_rng(2)
    scale = 10.0 ** rng.integers(1, 9, 20_000)
    d = np.array([round(x * s) / s for x, s in zip(rng.uniform(0, 1e4, 20_000).tolist(),
                                                    scale.tolist())])
    d = d[d > 0]
    check(np.concatenate([d, np.nextafter(d, 0), np.nextafter(d, np.inf)]), rng)


def test_rows_outside_the_exact_domain_are_spliced_in_order():
    """0.0, subnormals, tiny, >= 2^52 and huge floats go through repr, between compiled rows."""
    rng = np.random.default_rng(3)
    odd = [0.0, 5e-324, 1e-300, 1e-5, 0.03, 2.0 ** 52, 2.0 ** 53 + 2, 1e16, 1e300, 3.0, 0.5,
           4503599627370495.5, 123.456]
    check(odd + [1.5] * 5 + odd[::-1], rng)
    check(odd[:1], rng)


def test_given_heads_are_copied_verbatim():
    rng = np.random.default_rng(4)
    heads = ['{"index": 0, "id": "naïve \\"q\\" 😀"', '{"index": 1, "id": null, "line": 3',
             '{"index": 2, "id": [1, "two"]', '{"index": 3']
    check([1.25, 1e-9, 2.5, 77.7], rng, heads=heads)


def test_no_rows_is_no_bytes():
    empty = np.zeros(0)
    assert jsonrows.rows(empty.astype(np.int64), empty, empty, empty, numbers=[]) == b""


def test_score_file_writes_the_same_bytes_with_and_without_compiled_rows(
        tmp_path, tiny_lines, tiny_model_dir, monkeypatch):
    """``lmkit score`` takes the compiled rows once a compiled kernel runs in the process
    (``native.ready``); the f-string rows (no numba) are the same file, for text lines and for
    documents (heads given as strings)."""
    from lmkit import native
    from lmkit.docscore import score_file
    assert native.kernel("io.jsonrows", "rows") is not None and native.ready()
    src = tmp_path / "t.txt"
    src.write_text("\n".join(tiny_lines[:300] + ["", "naïve \"q\" \\ 😀"] + tiny_lines[:50])
                   + "\n", encoding="utf-8")
    calls = []
    real = jsonrows.rows
    monkeypatch.setattr(jsonrows, "rows", lambda *a, **k: calls.append(1) or real(*a, **k))
    for unit in ("line", "document"):
        score_file(tiny_model_dir, tmp_path / "c.jsonl", input=[str(src)], unit=unit,
                   progress=False)
        assert calls, "the compiled rows were not used"
        with monkeypatch.context() as m:
            m.setattr(jsonrows, "HAVE_NUMBA", False)
            score_file(tiny_model_dir, tmp_path / "p.jsonl", input=[str(src)], unit=unit,
                       progress=False)
        assert (tmp_path / "c.jsonl").read_bytes() == (tmp_path / "p.jsonl").read_bytes()
        calls.clear()
