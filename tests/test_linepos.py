import json

import numpy as np
import pytest

from lmkit import kinds
from lmkit.counts import count_chunk
from lmkit.errors import InputError, ModelFormatError
from lmkit.explicit import estimate_discount
from lmkit.features import Suffix, pad_sequences
from lmkit.linepos import LinePosition
from lmkit.rich import fit_rich, line_groups, solve_rich

BOS, EOS = 1, 2


def test_line_position_keys_hand_checked():
    table = (0, 0, 0, 3, 5)  # V = 5: tokens 3 and 4 add 3 and 5 bytes
    buf, pos, starts = pad_sequences([[3, 4, 3]], 1, BOS, EOS)
    assert buf.tolist() == [1, 3, 4, 3, 2]
    # offsets 0, 3, 8, 11 -> buckets (step 4) 0, 0, 2, 2; previous tokens 1, 3, 4, 3
    g = LinePosition(1, 4, 9, table)
    assert g.row_keys(buf, pos, starts, 5).tolist() == [1 + 0, 3 + 0, 4 + 5 * 2, 3 + 5 * 2]
    assert LinePosition(0, 4, 1, table).row_keys(buf, pos, starts, 5).tolist() == [0, 0, 1, 1]
    # with clusters of the previous token (C = 2: tokens 3, 4 -> 1, 0; BOS -> 0)
    gc = LinePosition(0, 4, 9, table, (0, 0, 0, 1, 0))
    assert gc.name == "linepos0_4_9_2" and gc.reach == 1
    assert gc.row_keys(buf, pos, starts, 5).tolist() == [0 * 2 + 0, 0 * 2 + 1, 2 * 2 + 0, 2 * 2 + 1]
    # a = 1 with clusters of the token 2 back: past one BOS there is no feature
    g2 = LinePosition(1, 4, 9, table, (0, 0, 0, 1, 0))
    assert g2.row_keys(buf, pos, starts, 5).tolist()[0] == -1
    assert kinds.tables_needed("linepos1_8_10") == ("piece_bytes",)
    assert kinds.tables_needed(gc.name) == ("piece_bytes", "clusters2")
    assert kinds.from_name(gc.name, {"piece_bytes": table, "clusters2": gc.clusters}) == gc
    with pytest.raises(ValueError, match="does not match its cluster table"):
        kinds.from_name("linepos0_4_9_3", {"piece_bytes": table, "clusters3": gc.clusters})
    with pytest.raises(ValueError, match="unknown feature group 'linepos1_8'"):
        kinds.tables_needed("linepos1_8")
    with pytest.raises(InputError, match="line position needs a >= 0, step >= 1"):
        LinePosition(0, 0, 3, table)


def dense_line_counts(seqs, V, table, a, step, cap, clusters=None):
    """Reference: walk every line, add up the bytes, one context tuple per target."""
    out = {}
    for seq in seqs:
        x = [BOS] * (a + 1) + list(seq) + [EOS]
        offset = 0
        for t in range(a + 1, len(x)):
            ctx = (min(offset // step, cap),) + tuple(x[t - o] for o in range(1, a + 1))
            if clusters is not None:
                ctx += (clusters[x[t - a - 1]],)
            out.setdefault(ctx, np.zeros(V, np.int64))[x[t]] += 1
            offset += table[x[t]]
    return out


@pytest.mark.parametrize("a,clusters", [(0, None), (1, None), (0, (0, 1, 1, 0, 2, 2, 0, 1, 2))])
def test_line_position_counts_match_dense_reference(a, clusters):
    V, table = 9, (0, 0, 0, 1, 2, 3, 4, 5, 7)
    rng = np.random.default_rng(0)
    seqs = [rng.integers(3, V, size=rng.integers(1, 14)).tolist() for _ in range(60)]
    g = LinePosition(a, 3, 6, table, clusters)
    c = count_chunk(seqs, V, [Suffix(1), g], BOS, EOS)
    ref = dense_line_counts(seqs, V, table, a, 3, 6, clusters)
    assert len(c.keys[1]) == len(ref)
    C = g.n_clusters
    for ctx, row in ref.items():
        bucket, toks = ctx[0], ctx[1:1 + a]
        key = (bucket * C + (ctx[-1] if clusters is not None else 0)) * V ** a
        key += sum(t * V ** i for i, t in enumerate(toks))
        i = c.rows(1, np.array([key]))[0]
        assert i >= 0 and c.F[1][i].toarray().ravel().tolist() == row.tolist()


def test_line_position_closed_form_is_the_hand_formula():
    """S[c, w] = log(1 + max(F - d, 0) / (d N1+(c) P_adj(w | previous token))), with P_adj the
    counts summed over the buckets, discounted toward q: checked entry by entry in loops."""
    V, table = 8, (0, 0, 0, 1, 2, 3, 4, 5)
    rng = np.random.default_rng(1)
    seqs = [rng.integers(3, V, size=rng.integers(1, 12)).tolist() for _ in range(80)]
    g = LinePosition(1, 4, 5, table)
    counts = count_chunk(seqs, V, [Suffix(1), g], BOS, EOS)
    params = solve_rich(counts)
    d = estimate_discount(counts.F[1])  # the group's own discount, n1 / (n1 + 2 n2)
    q = params.q
    F = counts.F[1].toarray().astype(float)
    keys = counts.keys[1]
    adj = {}
    for k, row in zip(keys, F):
        adj[k % V] = adj.get(k % V, 0) + row
    S = params.S[1].toarray()
    for i, k in enumerate(keys):
        m = adj[k % V]
        p_adj = (np.maximum(m - d, 0) + d * (m > 0).sum() * q) / m.sum()
        n1 = (F[i] > 0).sum()
        want = np.where(F[i] > 0, np.log1p(np.maximum(F[i] - d, 0) / (d * n1 * p_adj)), 0.0)
        assert np.allclose(S[i], want, atol=1e-12)


def test_piece_bytes_add_up_to_the_decoded_line(tiny_tok, tiny_lines):
    b = tiny_tok.piece_bytes()
    assert b.dtype == np.int64 and len(b) == tiny_tok.vocab_size
    assert b[tiny_tok.bos_id] == 0 and b[tiny_tok.eos_id] == 0
    for line in tiny_lines[:50] + ["naïve café, 30 €"]:
        ids = tiny_tok.encode(line)
        # the word-start mark of the first piece is a space that decoding drops
        assert sum(b[i] for i in ids) - len(tiny_tok.decode(ids).encode("utf-8")) in (0, 1)


def _tiny_line_model(tok, lines):
    from lmkit.model import LanguageModel
    from lmkit.rich import count_rich
    seqs = tok.encode_batch(lines)
    counts, tables = count_rich([seqs[:250]], tok.vocab_size, tok.bos_id, tok.eos_id, order=3,
                                context=2, skips=((1, 1, 1),), clusterings=((4, ((2, 0),)),),
                                piece_bytes=tok.piece_bytes(),
                                line_positions=((1, 8, 4, None), (0, 12, 3, 4), (0, 4, 3, 5)))
    # the shape whose 5-cluster table does not exist is left out
    assert [g.name for g in counts.groups][-2:] == ["linepos1_8_4", "linepos0_12_3_4"]
    params = fit_rich(counts, seqs[250:], tok.bos_id, tok.eos_id)
    return LanguageModel(tok, params, {"order": 3}, {"name": "tiny"})


def test_line_model_round_trip_and_next_token_sees_the_whole_line(tiny_tok, tiny_lines, tmp_path):
    from lmkit import store
    from lmkit.model import LanguageModel
    model = _tiny_line_model(tiny_tok, tiny_lines)
    path = model.save(tmp_path / "m")
    assert json.loads((path / "manifest.json").read_text())["groups"][-1] == "linepos0_12_3_4"
    loaded = LanguageModel.load(path)
    assert loaded.groups == model.groups
    seqs = tiny_tok.encode_batch(tiny_lines[:40])
    assert np.array_equal(model.log_proba_ids(seqs)[0], loaded.log_proba_ids(seqs)[0])
    # next-token distributions of long prefixes equal the scores of the whole line (the line
    # position is not cut to the n-gram reach)
    seq = max(seqs, key=len)
    assert len(seq) > 8
    full, _ = loaded.log_proba_ids([seq])
    nxt = loaded.next_log_proba_batch([seq[:t] for t in range(len(seq))])
    assert np.allclose(nxt[np.arange(len(seq)), seq], full[:len(seq)], atol=1e-9)
    assert np.allclose(np.exp(nxt).sum(axis=1), 1.0)
    arrays = store.params_to_arrays(model.params)
    assert "piece_bytes" in arrays and "clusters4" in arrays
    names = [g.name for g in model.groups]
    V = tiny_tok.vocab_size
    for bad, msg in ((np.full(V, -1, np.int64), r"piece bytes must lie in \[0, 1024\]"),
                     (np.zeros(V - 1, np.int64), "integer \\(V,\\) array with V = 300"),
                     (arrays["piece_bytes"].astype(np.float64), "'piece_bytes' is <f8")):
        with pytest.raises(ModelFormatError, match=msg):
            store.groups_from_names(names, {**arrays, "piece_bytes": bad})
    with pytest.raises(ModelFormatError, match="missing array 'piece_bytes'"):
        store.groups_from_names(names, {k: v for k, v in arrays.items() if k != "piece_bytes"})
    plain = [g for g in model.groups if not g.name.startswith("linepos")]
    with pytest.raises(ModelFormatError, match="do not belong"):
        store.arrays_to_params("sparse", plain, arrays, {})


def test_line_groups_take_the_cluster_table_by_size():
    table = np.arange(6) % 3
    gs = line_groups([0, 0, 0, 1, 2, 3], ((1, 8, 10, None), (0, 12, 7, 3), (0, 4, 4, 9)), [table])
    assert [g.name for g in gs] == ["linepos1_8_10", "linepos0_12_7_3"]
    assert gs[1].clusters == tuple(table.tolist())
