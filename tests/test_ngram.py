"""Tests for lmkit.ngram.mkn (+ ngram.arpa, ngram.build): interpolated modified Kneser-Ney as a sparse
softmax layer, its ARPA export and its bucketed build.

Hand-checked corpus (ids: 0 <unk>, 1 <s>, 2 </s>, 3 a, 4 b; V = 5), discounts fixed at
D1, D2, D3+ = 0.5, 1.0, 1.5 for every order::

    <s> a b </s>      <s> a a b </s>      <s> b </s>

Unigram adjusted counts = distinct left neighbours: a {<s>, a} -> 2, b {a, <s>} -> 2,
</s> {b} -> 1; total 5. gamma_0 = (1.0 + 1.0 + 0.5) / 5 = 0.5, uniform 1/5, so
q = P_1 = [unk .1, <s> .1, </s> (1-.5)/5+.1 = .2, a (2-1)/5+.1 = .3, b .3].

Order 2 (raw bigram counts): after a: b 2, a 1 (total 3), gamma(a) = (1.0 + 0.5)/3 = 0.5:
P(b|a) = 1/3 + .5*.3 = 0.483333, P(a|a) = .5/3 + .15 = 0.316667, P(</s>|a) = .5*.2 = 0.1.
After b: </s> 3, gamma(b) = 1.5/3: P(</s>|b) = 1.5/3 + .5*.2 = 0.6. After <s>: a 2, b 1, so
P(a|<s>) = 0.483333 as for a.

Order 3: trigram raw counts (<s> a): b 1, a 1; (a b): </s> 2; (a a): b 1; (<s> b): </s> 1.
Bigram adjusted counts: (a b) left {<s>, a} -> 2, (a a) {<s>} -> 1, (b </s>) {a, <s>} -> 2,
(<s> .) raw. So P2(b|a) = 0.483333, P2(a|a) = 0.316667, P2(</s>|b) = (2-1)/2 + .5*.2 = 0.6.
P3(a|<s> a) = .5/2 + .5*P2(a|a) = 0.408333; P3(b|a a) = .5/1 + .5*P2(b|a) = 0.741667;
P3(</s>|a b) = (2-1)/2 + .5*P2(</s>|b) = 0.8. The line "a a b" scores
P(a|<s>) P(a|<s> a) P(b|a a) P(</s>|a b) = 0.483333 * 0.408333 * 0.741667 * 0.8.
"""
import math
import types
from collections import defaultdict

import numpy as np
import pytest
import scipy.sparse as sp

from lmkit.counts import count_chunk
from lmkit.errors import InputError
from lmkit.explicit import choose_lambdas
from lmkit.features import Suffix, Window, decode_suffix_key, make_groups
from lmkit.ngram.arpa import arpa_words, check_arpa_exportable, write_arpa
from lmkit.ngram.mkn import mkn_discounts, prune_thresholds, solve_ngram
from lmkit.ngram.tables import backoff_tables, mkn_log_proba
from lmkit.scoring import context_rows, next_rows, sparse_log_proba, sparse_next_logp

BOS, EOS = 1, 2
HAND = [[3, 4], [3, 3, 4], [4]]
D = (0.5, 1.0, 1.5)


def fit(seqs, V, order, context=0, discount=None, prune=None):
    groups = make_groups(context, order)
    counts = count_chunk(seqs, V, groups, BOS, EOS)
    return solve_ngram(counts, discount=discount, prune=prune), groups


def probs(params, groups, seqs, V):
    rows, targets, _ = context_rows(groups, params.keys, seqs, V, BOS, EOS)
    return np.exp(sparse_log_proba(params, rows, targets))


def random_corpus(n=200, V=12, seed=0):
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, V - 2)  # Zipf-ish over the real tokens 3..V-1
    p /= p.sum()
    return [list(rng.choice(np.arange(3, V), size=rng.integers(1, 9), p=p)) for _ in range(n)]


def test_mkn_discounts_from_count_of_counts():
    values = np.array([1] * 10 + [2] * 4 + [3] * 2 + [4] + [7])
    (d1, d2, d3), ok = mkn_discounts(values)
    y = 10 / 18
    assert ok
    assert (d1, d2, d3) == pytest.approx((1 - 2 * y * 0.4, 2 - 3 * y * 0.5, 3 - 4 * y * 0.5))
    assert mkn_discounts(np.array([1, 1, 2]))[1] is False  # no n3, n4: fallback


def test_hand_checked_unigram_and_bigram():
    params, groups = fit(HAND, 5, 2, discount=D)
    assert params.q == pytest.approx([0.1, 0.1, 0.2, 0.3, 0.3])
    got = probs(params, groups, [[3, 4], [3, 3, 4], [4]], 5)
    # <s> a b </s> | <s> a a b </s> | <s> b </s>
    want = [0.483333, 0.483333, 0.6, 0.483333, 0.316667, 0.483333, 0.6, 0.316667, 0.6]
    assert got == pytest.approx(want, abs=1e-6)
    _, loggamma = backoff_tables(params)
    assert np.exp(loggamma[0]) == pytest.approx([0.5, 0.5, 0.5])  # rows <s>, a, b


def test_hand_checked_trigram():
    params, groups = fit(HAND, 5, 3, discount=D)
    got = probs(params, groups, [[3, 3, 4]], 5)
    assert got == pytest.approx([0.483333, 0.408333, 0.741667, 0.8], abs=1e-6)
    # unseen trigram history (b a): backs off to P2(. | a)
    assert probs(params, groups, [[4, 3, 4]], 5)[2] == pytest.approx(0.483333, abs=1e-6)


def reference_mkn(seqs, V, N):
    """Textbook interpolated MKN from n-gram dictionaries (independent of the sparse code)."""
    c = defaultdict(int)
    for s in seqs:
        toks = [BOS] + list(s) + [EOS]
        for i in range(1, len(toks)):
            for n in range(1, N + 1):
                if i - n + 1 >= 0:
                    c[tuple(toks[i - n + 1:i + 1])] += 1
    left = defaultdict(set)  # n-gram -> the distinct tokens seen right before it
    for g in c:
        if len(g) > 1:
            left[g[1:]].add(g[0])
    a = {g: c[g] if len(g) == N or g[0] == BOS else len(left[g]) for g in c}
    disc = {}
    for n in range(1, N + 1):
        cc = np.array([v for g, v in a.items() if len(g) == n])
        disc[n] = mkn_discounts(cc)[0]
    dof = lambda n, v: disc[n][min(v, 3) - 1]  # noqa: E731
    hist = defaultdict(dict)
    for g, v in a.items():
        hist[g[:-1]][g[-1]] = v

    def p(h, w):
        n = len(h) + 1
        if n == 1:
            row = hist[()]
            tot = sum(row.values())
            gamma = sum(dof(1, v) for v in row.values()) / tot
            return (row[w] - dof(1, row[w])) / tot * (w in row) + gamma / V
        if h not in hist:
            return p(h[1:], w)
        row = hist[h]
        tot = sum(row.values())
        gamma = sum(dof(n, v) for v in row.values()) / tot
        r = (row[w] - dof(n, row[w])) / tot if w in row else 0.0
        return r + gamma * p(h[1:], w)
    return p


def reference_log_proba(ref, seqs, order):
    out = []
    for s in seqs:
        toks = [BOS] + list(s) + [EOS]
        out += [math.log(ref(tuple(toks[max(0, i - order + 1):i]), toks[i]))
                for i in range(1, len(toks))]
    return np.array(out)


def repetitive_corpus(n=120, V=9, seed=0, ids=None):
    """Random lines with recurring long phrases, so that every order up to 12 has repeats."""
    ids = np.arange(3, V) if ids is None else np.asarray(ids)
    phrases = [list(np.random.default_rng(100 + k).choice(ids, size=14)) for k in range(4)]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        p = phrases[rng.integers(len(phrases))]
        a = int(rng.integers(0, 6))
        line = list(rng.choice(ids, size=rng.integers(0, 3))) + p[a:a + int(rng.integers(3, 14))]
        out.append([int(x) for x in line])
    return out


@pytest.mark.parametrize("order", range(2, 13))
def test_every_order_equals_textbook_reference(order):
    V = 9
    train, test = repetitive_corpus(150, V, 0), repetitive_corpus(30, V, 1) + [[8, 7, 6, 5, 4, 3]]
    params, groups = fit(train, V, order)
    want = reference_log_proba(reference_mkn(train, V, order), test, order)
    rows, targets, _ = context_rows(groups, params.keys, test, V, BOS, EOS)
    assert (rows[-1] >= 0).sum() >= 5  # the longest histories are really used
    np.testing.assert_allclose(sparse_log_proba(params, rows, targets), want, rtol=0, atol=1e-10)
    _, lg = backoff_tables(params)
    np.testing.assert_allclose(mkn_log_proba(params, rows, targets, lg), want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("order", [2, 3, 4])
def test_sparse_scoring_equals_textbook_reference(order):
    V = 12
    train, test = random_corpus(300, V, 0), random_corpus(40, V, 1)
    params, groups = fit(train, V, order)
    assert all(params.info["discounts_estimated"][1:])  # unigrams: too few types, fallback
    ref = reference_mkn(train, V, order)
    want = []
    for s in test:
        toks = [BOS] + list(s) + [EOS]
        want += [ref(tuple(toks[max(0, i - order + 1):i]), toks[i]) for i in range(1, len(toks))]
    rows, targets, _ = context_rows(groups, params.keys, test, V, BOS, EOS)
    lp = sparse_log_proba(params, rows, targets)
    assert np.exp(lp) == pytest.approx(want, rel=1e-9)
    _, lg = backoff_tables(params)  # the fast exact normaliser agrees
    assert mkn_log_proba(params, rows, targets, lg) == pytest.approx(lp, abs=1e-10)


@pytest.mark.parametrize("order,context,prune", [(3, 0, None), (4, 0, None), (3, 2, None),
                                                 (4, 0, [0, 1, 1])])
def test_probabilities_sum_to_one_seen_and_unseen(order, context, prune):
    V = 12
    params, groups = fit(random_corpus(200, V), V, order, context=context, prune=prune)
    if context:
        params = params.with_lambdas(np.array([1.0] * (order - 1) + [0.3] * context))
    for prefix in ([], [3], [3, 4], [3, 3, 3], [11, 10, 9, 8], [0, 0]):  # last ones unseen
        rows = next_rows(groups, params.keys, prefix, V, BOS)
        assert np.exp(sparse_next_logp(params, rows)).sum() == pytest.approx(1.0, abs=1e-12)


def test_suffix_ids_have_no_collisions():
    V = 12
    seqs = random_corpus(100, V)
    groups = make_groups(0, 4)
    counts = count_chunk(seqs, V, groups, BOS, EOS)
    rows, _, _ = context_rows(groups, counts.keys, seqs, V, BOS, EOS)
    for g, group in enumerate(groups):
        keys = counts.keys[g]
        assert len(np.unique(keys)) == len(keys)
        expected = []  # the true m-token history of every position, at most one BOS
        for s in seqs:
            toks = [BOS] + list(s) + [EOS]
            expected += [tuple(toks[i - group.m:i]) if i - group.m >= 0 else None
                         for i in range(1, len(toks))]
        for r, h in zip(rows[g], expected):
            if h is None:
                assert r == -1
            else:
                assert tuple(decode_suffix_key(int(keys[r]), group.m, V, counts.keys)) == h
        assert len(keys) == len({h for h in expected if h is not None})


def test_suffix_counts_are_shard_additive_and_so_is_the_solution():
    V = 12
    seqs = random_corpus(120, V)
    groups = make_groups(1, 4)
    whole = count_chunk(seqs, V, groups, BOS, EOS)
    parts = count_chunk(seqs[:50], V, groups, BOS, EOS) + count_chunk(seqs[50:], V, groups, BOS, EOS)
    assert whole.equals(parts)
    a, b = solve_ngram(whole), solve_ngram(parts)
    assert np.array_equal(a.q, b.q)
    for Sa, Sb in zip(a.S, b.S):
        assert (Sa != Sb).nnz == 0


def test_pruning_drops_rare_ngrams_and_stays_normalised():
    V = 12
    seqs = random_corpus(200, V)
    full, groups = fit(seqs, V, 4)
    pruned, _ = fit(seqs, V, 4, prune=[0, 0, 1])  # unigrams, bigrams kept; 3-, 4-grams <= 1 go
    assert pruned.S[0].nnz == full.S[0].nnz  # bigrams untouched (threshold 0)
    assert pruned.S[2].nnz < full.S[2].nnz and pruned.S[1].nnz < full.S[1].nnz
    assert prune_thresholds([0, 1], 4) == [0, 1, 1, 1]
    with pytest.raises(InputError, match="non-decreasing"):
        prune_thresholds([0, 2, 1], 4)
    with pytest.raises(InputError, match="unigrams are never pruned"):
        prune_thresholds([1], 3)


def test_lambda_search_starts_from_mkn_and_can_fix_suffix_groups():
    V = 12
    train, held = random_corpus(200, V, 0), random_corpus(60, V, 2)
    params, groups = fit(train, V, 3, context=2)
    assert groups == [Suffix(1), Suffix(2), Window(1), Window(2)]
    assert params.info["lambda_init"] == [1.0, 1.0, 0.0, 0.0]
    assert params.info["lambda_fixed"] == [False] * 4  # mixed model: every lambda is tuned
    rows, targets, _ = context_rows(groups, params.keys, held, V, BOS, EOS)
    lam, trace = choose_lambdas(params, rows, targets, init=params.info["lambda_init"],
                                fixed=[True, True, False, False])
    assert lam[:2].tolist() == [1.0, 1.0]
    assert trace[-1][1] <= trace[0][1]  # never worse than pure MKN on the tuning text
    free, ftrace = choose_lambdas(params, rows, targets, init=params.info["lambda_init"])
    assert ftrace[-1][1] <= trace[-1][1] + 1e-9  # more freedom, no worse on its own text
    pure, _ = fit(train, V, 3)
    assert pure.info["lambda_fixed"] == [True, True]


def test_bad_discount_and_bad_groups():
    counts = count_chunk(HAND, 5, make_groups(0, 3), BOS, EOS)
    with pytest.raises(InputError, match="D1 D2 D3"):
        solve_ngram(counts, discount=(0.5, 2.5, 1.0))
    with pytest.raises(InputError, match="suffix1..suffixM"):
        count_chunk(HAND, 5, [Suffix(2)], BOS, EOS)  # chained ids need suffix1 first
    counts = count_chunk(HAND, 5, [Window(1), Suffix(1)], BOS, EOS)
    with pytest.raises(InputError, match="suffix1..suffixM first"):
        solve_ngram(counts, bos_id=BOS)


def test_arpa_export_refuses_non_ngram_models():
    params, _ = fit(random_corpus(50, 12), 12, 3, context=1)
    with pytest.raises(InputError, match="pure suffix"):
        check_arpa_exportable(params)
    params, _ = fit(random_corpus(50, 12), 12, 3)
    params = params.with_lambdas(np.array([1.0, 0.5]))
    with pytest.raises(InputError, match="lambdas = 1"):
        check_arpa_exportable(params)


def _fake_tokenizer(V):
    return types.SimpleNamespace(vocab_size=V, unk_id=0, bos_id=BOS, eos_id=EOS)


def test_arpa_file_structure(tmp_path):
    params, _ = fit(HAND, 5, 2, discount=D)
    sizes = write_arpa(types.SimpleNamespace(params=params, tokenizer=_fake_tokenizer(5)),
                       tmp_path / "m.arpa")
    text = (tmp_path / "m.arpa").read_text()
    assert sizes == {"1-grams": 5, "2-grams": 5}
    assert "ngram 1=5\nngram 2=5\n" in text
    assert "-99.000000\t<s>\t-0.301030\n" in text  # log10 gamma(<s>) = log10 0.5
    assert f"{math.log10(0.6):.6f}\t4 </s>\n" in text  # words are token ids
    assert text.rstrip().endswith("\\end\\")


@pytest.mark.parametrize("order,prune", [(2, None), (3, None), (5, None), (4, [0, 1, 2])])
def test_arpa_round_trip_through_kenlm(tmp_path, order, prune):
    kenlm = pytest.importorskip("kenlm")
    V = 12
    params, groups = fit(random_corpus(300, V), V, order, prune=prune)
    tok = _fake_tokenizer(V)
    write_arpa(types.SimpleNamespace(params=params, tokenizer=tok), tmp_path / "m.arpa")
    km = kenlm.Model(str(tmp_path / "m.arpa"))
    test = random_corpus(30, V, 5) + [[0, 3, 0]]  # includes <unk>
    words = arpa_words(tok)
    got = np.concatenate([[s[0] for s in km.full_scores(" ".join(words[x]), bos=True, eos=True)]
                          for x in test])
    rows, targets, _ = context_rows(groups, params.keys, test, V, BOS, EOS)
    want = sparse_log_proba(params, rows, targets) / math.log(10)
    assert np.abs(got - want).max() < 1e-4


def test_cli_train_order_then_export_arpa(tmp_path, tiny_corpus_file, tiny_tok_file, tiny_lines, capsys):
    from lmkit.cli import main
    from lmkit.model import LanguageModel
    out = tmp_path / "m3"
    assert main(["train", "--input", str(tiny_corpus_file), "--tokenizer", str(tiny_tok_file),
                 "--order", "3", "--output", str(out)]) == 0
    model = LanguageModel.load(out)
    assert [g.name for g in model.groups] == ["suffix1", "suffix2"]  # --order alone: no windows
    assert model.params.lambdas.tolist() == [1.0, 1.0]
    assert main(["export-arpa", str(out), str(tmp_path / "m3.arpa")]) == 0
    assert "2-grams" in capsys.readouterr().out
    assert main(["train", "--input", str(tiny_corpus_file), "--tokenizer", str(tiny_tok_file),
                 "--context", "2", "--prune", "0", "1", "--output", str(tmp_path / "x")]) == 2
    assert "--prune [0, 1] needs n-gram groups" in capsys.readouterr().err
    kenlm = pytest.importorskip("kenlm")
    km = kenlm.Model(str(tmp_path / "m3.arpa"))
    seqs = model.encode_lines(tiny_lines[:20])
    words = arpa_words(model.tokenizer)
    got = np.concatenate([[s[0] for s in km.full_scores(" ".join(words[x]), bos=True, eos=True)]
                          for x in seqs])
    assert np.abs(got - model.log_proba_ids(seqs)[0] / math.log(10)).max() < 1e-4


def test_cli_export_arpa_refuses_window_model(tiny_model_dir, tmp_path, capsys):
    from lmkit.cli import main
    assert main(["export-arpa", str(tiny_model_dir), str(tmp_path / "w.arpa")]) == 2
    assert "pure suffix (n-gram) model" in capsys.readouterr().err


def test_model_fast_mkn_scorer_equals_generic_sparse_scorer(tiny_lines, tiny_tok):
    """LanguageModel scores pure MKN models with log Z = -sum log gamma; same numbers as the union path."""
    from lmkit.model import LanguageModel
    from lmkit.scoring import context_rows, sparse_log_proba
    groups = make_groups(0, 4)
    seqs = tiny_tok.encode_batch(tiny_lines)
    counts = count_chunk(seqs, tiny_tok.vocab_size, groups, tiny_tok.bos_id, tiny_tok.eos_id)
    params = solve_ngram(counts)
    model = LanguageModel(tiny_tok, params)
    held = tiny_tok.encode_batch(["a line never seen in training", tiny_lines[3]])
    fast, _ = model.log_proba_ids(held)
    assert model._mkn_backoffs() is not None
    rows, targets, _ = context_rows(groups, params.keys, held, tiny_tok.vocab_size,
                                    tiny_tok.bos_id, tiny_tok.eos_id)
    np.testing.assert_allclose(fast, sparse_log_proba(params, rows, targets), rtol=0, atol=1e-9)


def read_arpa(path):
    """{n-gram tuple of words: (log10 p, log10 backoff)} of an ARPA file (test helper)."""
    table, n = {}, 0
    for line in open(path, encoding="utf-8"):
        line = line.rstrip("\n")
        if line.endswith("-grams:"):
            n = int(line[1:line.index("-")])
        elif n and line and not line.startswith("\\"):
            f = line.split("\t")
            table[tuple(f[1].split(" "))] = (float(f[0]), float(f[2]) if len(f) > 2 else 0.0)
    return table


def arpa_log10p(table, words):
    """Back-off ARPA scoring: log10 P(w | h) for words = h + (w,)."""
    if words in table:
        return table[words][0]
    return table.get(words[:-1], (0, 0.0))[1] + arpa_log10p(table, words[1:])


@pytest.mark.parametrize("order", [2, 5, 8, 12])
def test_large_vocabulary_any_order_scores_and_exports(tmp_path, order):
    """V = 32,000 (packed keys would need V**11 for order 12): train, score, export, re-score."""
    V = 32000
    ids = np.random.default_rng(7).choice(np.arange(3, V), size=12, replace=False)
    train, test = repetitive_corpus(80, V, 0, ids), repetitive_corpus(10, V, 1, ids)
    params, groups = fit(train, V, order)
    want = reference_log_proba(reference_mkn(train, V, order), test, order)
    rows, targets, _ = context_rows(groups, params.keys, test, V, BOS, EOS)
    assert (rows[-1] >= 0).any()
    _, lg = backoff_tables(params)
    got = mkn_log_proba(params, rows, targets, lg)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)
    for prefix in (test[0][:order], [int(ids[0])] * 3):
        rows1 = next_rows(groups, params.keys, prefix, V, BOS)
        assert np.exp(sparse_next_logp(params, rows1)).sum() == pytest.approx(1.0, abs=1e-12)
    tok = _fake_tokenizer(V)
    write_arpa(types.SimpleNamespace(params=params, tokenizer=tok), tmp_path / "m.arpa")
    table, words = read_arpa(tmp_path / "m.arpa"), arpa_words(tok)
    arpa = []
    for s in test:
        w = ["<s>"] + list(words[s]) + ["</s>"]
        arpa += [arpa_log10p(table, tuple(w[max(0, i - order + 1):i + 1])) for i in range(1, len(w))]
    assert np.abs(np.array(arpa) - got / math.log(10)).max() < 1e-5  # ARPA keeps 6 decimals


def test_stored_backoff_weights_equal_derived_and_survive_save_load(tmp_path, tiny_lines, tiny_tok):
    """solve_ngram keeps log gamma per row; saved as G arrays, loading derives nothing."""
    import dataclasses

    from lmkit.errors import ModelFormatError
    from lmkit.model import LanguageModel
    from lmkit.ngram.tables import loggamma_tables
    groups = make_groups(0, 4)
    seqs = tiny_tok.encode_batch(tiny_lines)
    params = solve_ngram(count_chunk(seqs, tiny_tok.vocab_size, groups, tiny_tok.bos_id,
                                     tiny_tok.eos_id), prune=[0, 0, 1])
    derived = backoff_tables(params)[1]
    for a, b in zip(params.info["loggamma"], derived):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    LanguageModel(tiny_tok, params).save(tmp_path / "m")
    loaded = LanguageModel.load(tmp_path / "m")
    assert all(np.array_equal(a, b) for a, b in zip(loaded.params.info["loggamma"],
                                                    params.info["loggamma"]))
    held = tiny_tok.encode_batch(["an unseen line", tiny_lines[5]])
    np.testing.assert_allclose(loaded.log_proba_ids(held)[0],
                               LanguageModel(tiny_tok, params).log_proba_ids(held)[0], atol=1e-12)
    bad = dataclasses.replace(params, info={**params.info,
                                            "loggamma": [x[:-1] for x in params.info["loggamma"]]})
    with pytest.raises(ModelFormatError, match="do not match the model's rows"):
        loggamma_tables(bad)
    mixed, _ = fit(random_corpus(50, 12), 12, 3, context=1)
    assert "loggamma" not in mixed.info  # only exact MKN models keep them


@pytest.mark.parametrize("order,buckets", [(2, 3), (4, 1), (5, 4), (8, 5)])
def test_bucketed_build_equals_one_pass_solve(tmp_path, order, buckets):
    """build_ngram solves token-range buckets of histories separately: same model."""
    from lmkit.counts import count_ngrams, flat_buffer
    from lmkit.ngram.build import build_ngram
    V = 12
    seqs = random_corpus(300, V) + repetitive_corpus(100, V, 3) + [[]]
    want = solve_ngram(count_ngrams([seqs], V, make_groups(0, order), BOS, EOS))
    buf, _, _, _ = flat_buffer([seqs[:150], seqs[150:]], BOS, EOS, 1)
    got = build_ngram(buf, order, V, BOS, n_buckets=buckets, spill_dir=tmp_path)
    assert got.info["buckets"] == buckets and list(tmp_path.iterdir()) == []  # spills removed
    assert got.info["discounts"] == want.info["discounts"]
    assert_same_ngram_model(got, want)


def test_bounded_build_on_disk_equals_in_memory_solve(tmp_path, monkeypatch):
    """build_ngram_from_chunks with a tiny budget and tiny reads: every model array is a
    read-only map of its own .npy file, the model equals the one-pass solve to 1e-12, and the
    files go when the params do."""
    import gc
    from lmkit.ngram import disk as ngram_disk
    from lmkit.io import npyfile
    from lmkit.counts import count_ngrams
    from lmkit.ngram.build import build_ngram_from_chunks
    monkeypatch.setattr(ngram_disk, "CHUNK_TOKENS", 7)
    V, order = 12, 5
    seqs = random_corpus(300, V) + repetitive_corpus(100, V, 3)
    want = solve_ngram(count_ngrams([seqs], V, make_groups(0, order), BOS, EOS))
    got, n_seq, n_tok = build_ngram_from_chunks([seqs[:200], seqs[200:]], order, V, BOS, EOS,
                                                max_memory=400 * 200, spill_dir=tmp_path)
    assert got.info["buckets"] > 2 and (n_seq, n_tok) == (400, sum(len(s) + 1 for s in seqs))
    folder, = tmp_path.iterdir()  # only the model's arrays remain: ids and windows are gone
    assert {p.name for p in folder.iterdir()} == {".lmkit-owner"} | {  # + its owner marker
        f"{x}{g}{y}.npy" for g in range(order - 1)
        for x, y in (("S", "_data"), ("S", "_indices"), ("S", "_indptr"), ("keys", ""), ("G", ""))}
    mapped = (got.S[3].data, got.keys[3], got.info["loggamma"][3])
    assert all(npyfile.mapped_base(x) is not None for x in mapped)
    assert not got.S[3].data.flags.writeable
    assert_same_ngram_model(got, want)
    del got, mapped
    gc.collect()
    assert not folder.exists()


def test_bucket_sizes_follow_the_memory_budget():
    from lmkit.ngram.build import bucket_edges, build_ngram_from_chunks, n_buckets_for
    assert bucket_edges(np.array([0, 1, 1, 2, 3]), 0, 4, 2).tolist() == [0, 1, 4]
    assert n_buckets_for(10**6, None) == 1
    assert n_buckets_for(10**6, 10**8) == 4  # 200 bytes per position, half the budget each
    seqs = random_corpus(200, 12)
    p1, n_seq, n_tok = build_ngram_from_chunks([seqs], 3, 12, BOS, EOS)
    p2, _, _ = build_ngram_from_chunks([seqs], 3, 12, BOS, EOS, max_memory=n_tok * 100)
    assert (n_seq, n_tok) == (200, sum(len(s) + 1 for s in seqs)) and p2.info["buckets"] > 1
    assert all(np.allclose(a.data, b.data, atol=1e-12) for a, b in zip(p1.S, p2.S))



@pytest.mark.parametrize("seed", range(5))
def test_row_find_matches_a_dictionary(seed):
    from lmkit.ngram.tables import _row_find
    rng = np.random.default_rng(seed)
    M = sp.random(50, 40, density=[0.0, 0.05, 0.5, 1.0, 0.2][seed], random_state=seed,
                  format="csr")
    M.sort_indices()
    where = {(r, c): i for r in range(50) for i, c in
             zip(range(M.indptr[r], M.indptr[r + 1]), M.indices[M.indptr[r]:M.indptr[r + 1]])}
    rows, cols = rng.integers(0, 50, 2000), rng.integers(0, 40, 2000)
    want = [where.get((r, c), -1) for r, c in zip(rows, cols)]
    assert _row_find(M.indices, M.indptr, rows, cols).tolist() == want


def test_row_find_with_a_few_long_rows_among_many_short_ones():
    from lmkit.ngram.tables import _row_find
    rng = np.random.default_rng(7)
    lengths = np.where(rng.random(400) < 0.02, 300, rng.integers(0, 3, 400))
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    indices = np.concatenate([np.sort(rng.choice(1000, k, replace=False)) for k in lengths])
    M = sp.csr_matrix((np.ones(len(indices)), indices, indptr), shape=(400, 1000))
    rows = rng.integers(0, 400, 5000)
    cols = np.where(rng.random(5000) < 0.5, rng.integers(0, 1000, 5000),
                    indices[np.minimum(indptr[rows], len(indices) - 1)])
    where = {(r, c): i for r in range(400) for i in range(indptr[r], indptr[r + 1])
             for c in [indices[i]]}
    assert _row_find(M.indices, M.indptr, rows, cols).tolist() == [where.get((r, c), -1) for r, c in zip(rows, cols)]


def test_mkn_scores_do_not_depend_on_the_position_order(tiny_tok, tiny_lines):
    from lmkit.counts import count_ngrams
    from lmkit.ngram.tables import loggamma_tables, mkn_log_proba
    from lmkit.scoring import context_rows
    groups = make_groups(context=0, order=4)
    seqs = [tiny_tok.encode(x) for x in tiny_lines]
    params = solve_ngram(count_ngrams([seqs[:200]], tiny_tok.vocab_size, groups, tiny_tok.bos_id,
                                      tiny_tok.eos_id), bos_id=tiny_tok.bos_id)
    rows, targets, _ = context_rows(groups, params.keys, seqs[200:], tiny_tok.vocab_size,
                                    tiny_tok.bos_id, tiny_tok.eos_id)
    lg = loggamma_tables(params)
    perm = np.random.default_rng(0).permutation(len(targets))
    assert np.array_equal(mkn_log_proba(params, rows, targets, lg, order=perm),
                          mkn_log_proba(params, rows, targets, lg))


def assert_same_ngram_model(got, want):
    """Same q, rows, patterns and log gammas; values to 1e-12."""
    np.testing.assert_allclose(got.q, want.q, rtol=0, atol=1e-15)
    for a, b, ka, kb, ga, gb in zip(got.S, want.S, got.keys, want.keys, got.info["loggamma"],
                                    want.info["loggamma"]):
        assert np.array_equal(ka, kb) and np.array_equal(a.indptr, b.indptr)
        assert np.array_equal(a.indices, b.indices)
        np.testing.assert_allclose(a.data, b.data, rtol=0, atol=1e-12)
        np.testing.assert_allclose(ga, gb, rtol=0, atol=1e-12)
