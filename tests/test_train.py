"""Training stages: the pure fit(), the held-out rule, the n-gram paths (one pass, bounded)."""
import numpy as np
import pytest

import lmkit
from lmkit.counts import count_chunk
from lmkit.features import make_groups
from lmkit.solve import fit, lambda_start
from lmkit.features import Suffix, Window


def test_lambda_start_rule():
    init, fixed = lambda_start([Window(1), Window(2)])
    assert init.tolist() == [1, 0] and not fixed.any()
    init, fixed = lambda_start([Suffix(1), Suffix(2)])
    assert init.tolist() == [1, 1] and fixed.all()  # pure MKN keeps its lambdas at 1
    init, fixed = lambda_start([Suffix(1), Window(1)])
    assert init.tolist() == [1, 0] and not fixed.any()


def test_fit_is_pure_and_deterministic(tiny_tok, tiny_lines):
    seqs = tiny_tok.encode_batch(tiny_lines[:250])
    held = tiny_tok.encode_batch(tiny_lines[250:])
    groups = make_groups(2)
    counts = count_chunk(seqs, tiny_tok.vocab_size, groups, tiny_tok.bos_id, tiny_tok.eos_id)
    a, b = fit(counts, held), fit(counts, held)
    assert np.array_equal(a.lambdas, b.lambdas) and a.lambdas[1] > 0
    assert all((x != y).nnz == 0 for x, y in zip(a.S, b.S))
    given = fit(counts, held, lambdas=[0.5, 0.25])
    assert given.lambdas.tolist() == [0.5, 0.25] and given.info["lambda_rule"] == "given"
    with pytest.raises(ValueError, match="lambdas needs 2 finite values"):
        fit(counts, held, lambdas=[1.0, float("nan")])


def test_pure_ngram_counts_all_lines_and_bounded_build_is_the_same(tiny_corpus_file, tiny_tok_file,
                                                                    tiny_lines, tmp_path):
    one = lmkit.train(input=[str(tiny_corpus_file)], tokenizer=str(tiny_tok_file), order=3,
                      verbose=False)
    assert one.corpus["sequences"] == len(tiny_lines)  # no held-out lines set aside
    bounded = lmkit.train(input=[str(tiny_corpus_file)], tokenizer=str(tiny_tok_file), order=3,
                          max_memory="4K", verbose=False)
    assert bounded.corpus == one.corpus
    lines = tiny_lines[:40]
    assert bounded.perplexity(lines) == pytest.approx(one.perplexity(lines), rel=1e-12)
    # its arrays are disk-backed (memory maps): saved and loaded back, still the same model
    again = lmkit.LanguageModel.load(bounded.save(tmp_path / "m"))
    assert again.perplexity(lines) == pytest.approx(one.perplexity(lines), rel=1e-12)


def test_window_model_with_own_files_holds_out_every_20th_line(tiny_corpus_file, tiny_tok_file,
                                                               tiny_lines):
    m = lmkit.train(input=[str(tiny_corpus_file)], tokenizer=str(tiny_tok_file), context=2,
                    verbose=False)
    assert m.corpus["sequences"] == len(tiny_lines)  # held-out counts are added back
    assert "held-out NLL" in m.params.info["lambda_rule"]
