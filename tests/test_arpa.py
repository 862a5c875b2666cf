"""ARPA import/export: lmkit's model of an ARPA file scores exactly as kenlm.Model does."""
import math
import os
import subprocess

import numpy as np
import pytest

from lmkit.ngram.arpa import import_arpa, piece_words, read_arpa
from lmkit.errors import InputError
from lmkit.ngram.arpa import arpa_words, write_arpa

# KenLM's binaries are not on PyPI: CI and users point LMKIT_KENLM_BIN at the folder holding a
# built lmplz (cmake build/bin); without it the lmplz tests skip, saying so under `pytest -rs`
KENLM_BIN = os.environ.get("LMKIT_KENLM_BIN")


def lmplz() -> str:
    """The lmplz binary from $LMKIT_KENLM_BIN; skip without the variable, fail on a bad one."""
    if not KENLM_BIN:
        pytest.skip("LMKIT_KENLM_BIN not set: the lmplz cross-check needs a folder with KenLM's "
                    "lmplz (set LMKIT_KENLM_BIN=kenlm/build/bin)")
    path = os.path.join(KENLM_BIN, "lmplz")
    if not os.access(path, os.X_OK):
        pytest.fail(f"LMKIT_KENLM_BIN={KENLM_BIN}: no executable lmplz there; fix the variable")
    return path


@pytest.fixture(scope="module")
def ngram_model(tiny_corpus_file, tiny_tok_file):
    from lmkit.train import train
    return train(input=[str(tiny_corpus_file)], tokenizer=str(tiny_tok_file), order=4)


def kenlm_log10(km, words, seqs):
    return np.concatenate([[s[0] for s in km.full_scores(" ".join(words[x]), bos=True, eos=True)]
                           for x in seqs])


def lmkit_log10(model, seqs):
    return model.log_proba_ids(seqs)[0] / math.log(10)


@pytest.mark.parametrize("words", ["ids", "pieces"])
def test_export_then_import_matches_kenlm(tmp_path, ngram_model, tiny_lines, words):
    kenlm = pytest.importorskip("kenlm")
    tok = ngram_model.tokenizer
    write_arpa(ngram_model, tmp_path / "m.arpa", words=words)
    model, report = import_arpa(tmp_path / "m.arpa", tok)  # words detected
    assert report["missing_pieces"] == 0 and report["max_backoff_error_log10"] < 2e-6
    seqs = tok.encode_batch(tiny_lines[:40] + ["Zebra quux 123 !!"])  # unseen n-grams too
    table = arpa_words(tok) if words == "ids" else piece_words(tok)
    got = kenlm_log10(kenlm.Model(str(tmp_path / "m.arpa")), table, seqs)
    assert np.abs(lmkit_log10(model, seqs) - got).max() < 1e-5
    # and the imported model is a normal lmkit model: save/load keeps the numbers
    again = type(model).load(model.save(tmp_path / "imported"))
    assert np.array_equal(lmkit_log10(again, seqs), lmkit_log10(model, seqs))


def test_piece_export_is_readable_text(tmp_path, ngram_model, tiny_lines):
    kenlm = pytest.importorskip("kenlm")
    tok = ngram_model.tokenizer
    write_arpa(ngram_model, tmp_path / "p.arpa", words="pieces")
    text = (tmp_path / "p.arpa").read_text()
    assert "\t▁" in text and "<unk>" in text
    km = kenlm.Model(str(tmp_path / "p.arpa"))
    line = tiny_lines[3]
    # what `spm_encode --output_format=piece | query` does: score the piece text
    got = km.score(" ".join(tok.encode_pieces(line)), bos=True, eos=True)
    assert got == pytest.approx(float(ngram_model.log_proba(line).sum()) / math.log(10), abs=1e-4)


# A normalised hand-made ARPA: p(a)=.4 p(b)=.3 p(</s>)=.2 p(<unk>)=.1; '<s> a a' is listed but
# its suffix 'a a' is not (as in pruned SRILM models); 'a b' and 'b' are listed without
# successors (bo 1); piece 'c' is not listed. Back-offs: bo(<s>) = .5/.6, bo(a) = .4/.7,
# bo(<s> a) = .5 / (1 - bo(a) p(a)).
HAND = """\\data\\
ngram 1=5
ngram 2=2
ngram 3=1

\\1-grams:
-99\t<s>\t-0.0791812460476
-0.698970004336\t</s>
-1\t<unk>
-0.397940008672\ta\t-0.243038048686
-0.522878745280\tb

\\2-grams:
-0.301029995664\t<s> a\t-0.188325715473
-0.221848749616\ta b\t0

\\3-grams:
-0.301029995664\t<s> a a
\\end\\
"""
HAND_PIECES = ["<unk>", "<s>", "</s>", "a", "b", "c"]


def _hand_tok():
    import types
    return types.SimpleNamespace(vocab_size=6, unk_id=0, bos_id=1, eos_id=2,
                                 id_to_piece=HAND_PIECES.__getitem__)


def test_hand_arpa_without_suffix_closure_matches_kenlm(tmp_path, capsys):
    (tmp_path / "h.arpa").write_text(HAND)
    model, report = import_arpa(tmp_path / "h.arpa", _hand_tok())
    assert report["missing_pieces"] == 1 and report["max_backoff_error_log10"] < 1e-9
    assert capsys.readouterr().err == ""  # normalised: no warning
    seqs = [[3, 4], [3, 3, 4], [3, 3, 3, 2], [4, 3], [], [3, 3, 5, 3], [5]]
    mine = lmkit_log10(model, seqs)
    pieces = np.array(HAND_PIECES, dtype=object)
    # trigram <s> a b: not listed, backs off from <s> a (bo) to the bigram a b
    assert mine[1] == pytest.approx(-0.188325715473 - 0.221848749616, abs=1e-9)
    assert mine[4] == pytest.approx(-0.301029995664, abs=1e-9)  # the listed trigram <s> a a
    # kenlm.Model refuses this file (its probing hash assumes suffix closure), so the reference
    # is KenLM's query rule written out: longest listed match + back-offs of longer histories
    got = np.array([_arpa_query(read_arpa(tmp_path / "h.arpa"), ["<s>"] + list(pieces[s[:i]]),
                                pieces[t]) for s in seqs for i, t in enumerate(s + [2])])
    is_c = np.concatenate([np.r_[s, 2] for s in seqs]) == 5
    # KenLM gives the unlisted 'c' all of p(<unk>); lmkit shares it between <unk> and 'c'
    assert np.abs(mine - got + np.where(is_c, math.log10(2), 0)).max() < 1e-5
    # the model is a distribution after every context, including after the unlisted piece
    for ctx in ([], [3], [3, 3], [5], [4, 5]):
        assert np.exp(model.next_logp(ctx)).sum() == pytest.approx(1.0, abs=1e-9)


def _arpa_query(tables, history, word):
    """log10 p(word | history) by the ARPA back-off rule (unknown words read as <unk>)."""
    d = {tuple(w): (p, b) for words, lp, bo in tables for w, p, b in zip(words, lp, bo)}
    known = lambda x: x if (x,) in d else "<unk>"
    hist, word = tuple(known(x) for x in history)[-(len(tables) - 1):], known(word)
    for k in range(len(hist), -1, -1):
        if hist[len(hist) - k:] + (word,) in d:
            return d[hist[len(hist) - k:] + (word,)][0] + sum(
                d.get(hist[len(hist) - j:], (0, 0))[1] for j in range(k + 1, len(hist) + 1))


def test_unnormalised_backoff_without_successors_is_reported(tmp_path, capsys):
    (tmp_path / "u.arpa").write_text(HAND.replace("-0.522878745280\tb", "-0.522878745280\tb\t-0.2")
                                     .replace("\ta b\t0", "\ta b\t-0.3"))
    with pytest.warns(UserWarning, match="not normalised"):
        model, report = import_arpa(tmp_path / "u.arpa", _hand_tok())
    # 'b' and 'a b' have no successors: lmkit's gamma is 1 there, the file says 10**-0.2, -0.3
    assert report["max_backoff_error_log10"] == pytest.approx(0.3)


def test_unknown_words_and_bad_files(tmp_path, ngram_model):
    tok = ngram_model.tokenizer
    (tmp_path / "bad.arpa").write_text(HAND.replace("\t4 5", "\tzebra 5"))
    with pytest.raises(InputError, match="ARPA word 'a' is not a piece or id of this vocabulary"):
        import_arpa(tmp_path / "bad.arpa", tok, words="ids")
    (tmp_path / "trunc.arpa").write_text(HAND.replace("ngram 2=2", "ngram 2=9"))
    with pytest.raises(InputError, match="header says ngram 2=9"):
        read_arpa(tmp_path / "trunc.arpa")
    with pytest.raises(InputError, match="words must be ids or pieces"):
        write_arpa(ngram_model, tmp_path / "x.arpa", words="letters")


@pytest.mark.parametrize("prune", [[], ["--prune", "0", "1", "1"]])
def test_lmplz_arpa_matches_kenlm(tmp_path, ngram_model, tiny_lines, prune):
    kenlm = pytest.importorskip("kenlm")
    LMPLZ = lmplz()
    tok = ngram_model.tokenizer
    text = "\n".join(" ".join(tok.encode_pieces(x)) for x in tiny_lines) + "\n"
    arpa = tmp_path / "lmplz.arpa"
    subprocess.run([LMPLZ, "-o", "4", "--discount_fallback", "-S", "64M", "-T", str(tmp_path),
                    "--arpa", str(arpa)] + prune, input=text.encode(), check=True,
                   capture_output=True)
    model, report = import_arpa(arpa, tok)
    assert report["max_backoff_error_log10"] < 1e-5
    seqs = tok.encode_batch(tiny_lines[:50] + ["Zebra quux 123 !!"])
    got = kenlm_log10(kenlm.Model(str(arpa)), piece_words(tok), seqs)
    listed = {w[0] for w in read_arpa(arpa)[0][0]}
    unlisted = np.array([piece_words(tok)[t] not in listed
                         for t in np.concatenate([np.r_[s, tok.eos_id] for s in seqs])])
    assert unlisted.any() and report["missing_pieces"] == tok.vocab_size - len(listed)
    # listed pieces: KenLM's numbers; unlisted ones share p(<unk>) with <unk> (module docstring)
    shift = np.where(unlisted, math.log10(1 + report["missing_pieces"]), 0.0)
    assert np.abs(lmkit_log10(model, seqs) - got + shift).max() < 1e-5


# ---- next-token API (on models of every kind) -------------------------------------------------
@pytest.mark.parametrize("context", ["", "Th", "Love and the king", "zz qq"])
def test_next_distribution_equals_kenlm_and_top_next_is_its_top(tmp_path, ngram_model, context):
    kenlm = pytest.importorskip("kenlm")
    tok = ngram_model.tokenizer
    write_arpa(ngram_model, tmp_path / "m.arpa", words="pieces")
    km = kenlm.Model(str(tmp_path / "m.arpa"))
    state, out = kenlm.State(), kenlm.State()
    km.BeginSentenceWrite(state)
    for piece in tok.encode_pieces(context) if context else []:
        km.BaseScore(state, piece, out)
        state, out = out, state
    words = piece_words(tok)
    want = np.array([km.BaseScore(state, w, out) for w in words])
    p = ngram_model.next_distribution(context)
    assert p.sum() == pytest.approx(1.0, abs=1e-9)
    keep = np.arange(tok.vocab_size) != tok.bos_id
    assert np.abs(np.log10(p[keep]) - want[keep]).max() < 1e-4
    top = ngram_model.top_next(context, 7)
    order = np.argsort(-np.where(keep, p, -1), kind="stable")[:7]
    assert [x for x, _ in top] == [tok.id_to_piece(int(i)) for i in order]
    assert [y for _, y in top] == pytest.approx(p[order].tolist(), rel=1e-9)


def test_top_next_on_window_model_and_vocab(tiny_model):
    p = tiny_model.next_distribution([5, 6])
    top = tiny_model.top_next([5, 6], 5)
    assert [y for _, y in top] == pytest.approx(np.sort(p)[::-1][:5].tolist(), rel=1e-9)
    assert tiny_model.vocab[tiny_model.tokenizer.eos_id] == "</s>"
    assert len(tiny_model.vocab) == tiny_model.vocab_size
    with pytest.raises(InputError, match="top must be an integer >= 1"):
        tiny_model.top_next("a", 0)
