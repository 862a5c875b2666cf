"""Entropy pruning: kept n-grams keep their probabilities, contexts stay normalised, the
criterion is the relative entropy it claims, and the result is a KenLM-exact ARPA."""
import math

import numpy as np
import pytest

from lmkit.errors import InputError
from lmkit.ngram.arpa import arpa_words, write_arpa
from lmkit.ngram.packed import packed_view
from lmkit.features import decode_histories
from lmkit.ngram.tables import backoff_tables
from lmkit.ngram.prune import entropy_criteria, n_ngrams, prune_entropy


@pytest.fixture(scope="module")
def model4(tiny_corpus_file, tiny_tok_file):
    from lmkit.train import train
    return train(input=[str(tiny_corpus_file)], tokenizer=str(tiny_tok_file), order=4)


def test_threshold_zero_changes_nothing(model4, tiny_lines):
    same = prune_entropy(model4, 0.0)
    seqs = model4.encode_lines(tiny_lines[:30])
    assert n_ngrams(same) == n_ngrams(model4)
    assert np.abs(same.log_proba_ids(seqs)[0] - model4.log_proba_ids(seqs)[0]).max() < 1e-10


def test_pruning_keeps_listed_probabilities_and_normalises(model4):
    crit = entropy_criteria(model4)
    sizes = [n_ngrams(prune_entropy(model4, t, criteria=crit)) for t in (1e-6, 1e-5, 1e-4, 1e-3)]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < n_ngrams(model4) / 2
    pruned = prune_entropy(model4, 1e-4, criteria=crit)
    for ctx in ([], [5], [5, 9], [5, 9, 11, 40]):
        assert np.exp(pruned.next_logp(ctx)).sum() == pytest.approx(1.0, abs=1e-9)
    # every n-gram still listed has the probability it had before pruning
    before, after = backoff_tables(model4.params)[0], backoff_tables(pruned.params)[0]
    V = model4.vocab_size
    for m, (So, Sp) in enumerate(zip(model4.params.S, pruned.params.S)):
        ho = decode_histories(model4.params.keys, m + 1, V)  # chained ids differ: compare tokens
        hp = decode_histories(pruned.params.keys, m + 1, V)
        so = {(tuple(h), c): v for h, c, v in zip(np.repeat(ho, np.diff(So.indptr), axis=0),
                                                   So.indices, before[m])}
        for h, c, v in zip(np.repeat(hp, np.diff(Sp.indptr), axis=0), Sp.indices, after[m]):
            assert v == pytest.approx(so[(tuple(h), c)], abs=1e-9)


def test_criterion_is_the_relative_entropy_of_dropping_one_ngram(model4):
    """D(h w) / P(h) = KL(p(.|h) || p'(.|h)) with p' the model without h w, summed over all V."""
    crit = entropy_criteria(model4, history="q")
    hist, cols, logp, lower, D = crit[-1]
    params, _, loggammas = packed_view(model4.params)  # the criteria use packed history keys
    V = model4.vocab_size
    bos = model4.tokenizer.bos_id
    S = params.S[-1]
    lg = loggammas[-1]
    from lmkit.ngram.prune import _log_marginals
    checked = 0
    for e in np.argsort(-D)[:5]:
        ids = [int(hist[e] // V ** i % V) for i in range(3)]
        if bos in ids:
            continue
        row = int(np.searchsorted(params.keys[-1], hist[e]))
        p = np.exp(model4.next_logp([7] + ids))  # 7 first so the history is exactly `ids`
        lo, hi = S.indptr[row], S.indptr[row + 1]
        s_row = np.zeros(V)
        s_row[S.indices[lo:hi]] = S.data[lo:hi]
        p_low = p / np.exp(lg[row] + s_row)
        listed = np.zeros(V, bool)
        listed[S.indices[lo:hi]] = True
        listed[cols[e]] = False
        alpha2 = (1 - p[listed].sum()) / (1 - p_low[listed].sum())
        p2 = np.where(listed, p, alpha2 * p_low)
        kl = float(np.sum(p * (np.log(p) - np.log(p2))))
        ph = math.exp(_log_marginals(params, loggammas, np.array([hist[e]]), 3,
                                     bos, model4.tokenizer.eos_id)[0])
        assert D[e] == pytest.approx(ph * kl, rel=1e-6)
        checked += 1
    assert checked >= 2


def test_stationary_unigram_is_the_bigram_chains_marginal(model4):
    from lmkit.ngram.prune import stationary_unigram
    params, tok = model4.params, model4.tokenizer
    lg = backoff_tables(params)[1]
    pi = stationary_unigram(params, lg, tok.bos_id, tok.eos_id, iters=500)
    assert pi.sum() == pytest.approx(1.0)
    # pi[w] = sum_v pi[v] p(w | v) with bigram contexts only; </s> is followed by <s>
    from lmkit.ngram.tables import mkn_log_proba
    V = model4.vocab_size
    P = np.empty((V, V))
    for v in range(V):
        ctx = tok.bos_id if v == tok.eos_id else v
        row = int(np.searchsorted(params.keys[0], ctx)) if ctx in params.keys[0] else -1
        rows = [np.full(V, row)] + [np.full(V, -1)] * (len(params.S) - 1)
        P[v] = np.exp(mkn_log_proba(params, rows, np.arange(V), lg))
    assert np.abs(pi @ P - pi).max() < 1e-9


def test_pruned_model_exports_to_an_exact_kenlm_arpa(model4, tiny_lines, tmp_path):
    kenlm = pytest.importorskip("kenlm")
    pruned = prune_entropy(model4, 1e-4)
    write_arpa(pruned, tmp_path / "p.arpa")
    km = kenlm.Model(str(tmp_path / "p.arpa"))
    seqs = model4.encode_lines(tiny_lines[:40])
    words = arpa_words(model4.tokenizer)
    got = np.concatenate([[s[0] for s in km.full_scores(" ".join(words[x]), bos=True, eos=True)]
                          for x in seqs])
    assert np.abs(pruned.log_proba_ids(seqs)[0] / math.log(10) - got).max() < 1e-4


def test_bad_threshold_and_window_model(model4, tiny_model):
    with pytest.raises(InputError, match="threshold must be >= 0"):
        prune_entropy(model4, -1)
    with pytest.raises(InputError, match="pruning needs a pure n-gram model"):
        prune_entropy(tiny_model, 1e-5)


def test_prune_entropy_at_train_time_equals_pruning_afterwards(model4, tiny_corpus_file,
                                                               tiny_tok_file, tiny_lines):
    from lmkit.train import train
    at_train = train(input=[str(tiny_corpus_file)], tokenizer=str(tiny_tok_file), order=4,
                     prune_entropy=1e-4, verbose=False)
    after = prune_entropy(model4, 1e-4)
    assert n_ngrams(at_train) == n_ngrams(after) < n_ngrams(model4)
    seqs = model4.encode_lines(tiny_lines[:20])
    assert np.abs(at_train.log_proba_ids(seqs)[0] - after.log_proba_ids(seqs)[0]).max() < 1e-12
    with pytest.raises(InputError, match="prune_entropy needs a pure n-gram model"):
        train(input=[str(tiny_corpus_file)], order=3, context=2, prune_entropy=1e-4)
