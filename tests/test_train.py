"""Training stages: the pure fit(), the held-out rule, the n-gram paths (one pass, bounded)."""
import re

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



def test_holdout_block_rule_by_hand():
    from lmkit.train import HOLDOUT_MAX_BLOCK, holdout_block
    # n // (20 * 25) lines per block, at least 1, at most HOLDOUT_MAX_BLOCK (500)
    assert [holdout_block(n) for n in (0, 499, 999, 1000, 40_000, 250_000, 1_162_709)] == \
        [1, 1, 1, 2, 80, 500, HOLDOUT_MAX_BLOCK]


def test_carved_lines_are_every_20th_block_and_kept_is_the_rest(tmp_path):
    """load_text carves every 20th block of consecutive lines (single lines for a small text);
    kept gives back exactly the other lines, in order."""
    from lmkit.config import CorpusConfig
    from lmkit.train import kept, load_text
    for n, block in ((1000, 2), (30, 1)):
        path = tmp_path / f"t{n}.txt"
        lines = [f"line {i}" for i in range(n)]
        path.write_text("\n".join(lines) + "\n")
        corpus, valid, carved = load_text(CorpusConfig(input=[str(path)]))
        assert carved == block
        want = [x for i, x in enumerate(lines) if (i // block) % 20 == 19]
        assert valid == want and len(valid) == n // 20
        if block == 2:  # consecutive pairs: lines 38, 39, then 78, 79
            assert valid[:4] == ["line 38", "line 39", "line 78", "line 79"]
        rest = list(kept(corpus, carved))
        assert rest == [x for x in lines if x not in set(want)]
        assert list(kept(lines, True)) == [x for i, x in enumerate(lines) if i % 20 != 19]

# ---- routes and the scale options each one honours (issue 20 item 3) ----------------------------
from lmkit.config import TrainConfig  # noqa: E402
from lmkit.errors import OptionError  # noqa: E402
from lmkit.train import check_scale, route  # noqa: E402

RICH, NGRAM, SPILL = {}, {"order": 3}, {"context": 2}
BOUNDED, NDASK, DASK = {"order": 3, "max_memory": "1G"}, {"order": 3, "engine": "dask"}, \
    {"context": 2, "engine": "dask"}
TRANSFORMER = {"solver": "transformer", "max_seconds": 1}
RESIDUAL, RESIDUAL_OF = {"solver": "residual", "max_seconds": 1}, \
    {"solver": "residual", "max_seconds": 1, "base": "some/model"}
WORKERS, ENGINE, SCHED = {"workers": 2}, {"engine": "dask"}, \
    {"engine": "dask", "scheduler": "tcp://127.0.0.1:1"}
SPILLDIR, MEM, READ, CHUNK = {"spill_dir": "/nonexistent"}, {"max_memory": "1G"}, \
    {"workers_read": True}, {"chunk_lines": 100}
RICH_NO = r"is not supported on the default \(feature-rich\) route; drop it"
RICH_FILES, RICH_MEM = {"input": ["t.txt"]}, {"max_memory": "1G"}

# (model options, scale options, the route they take, None = honoured / the refusal)
CASES = [
    (RICH, WORKERS, "rich", None), (RICH, ENGINE, "rich", None), (RICH, SCHED, "rich", None),
    (RICH, {**SCHED, "workers": 2}, "rich",
     "workers 2 " + RICH_NO + r" \(the cluster at scheduler brings its own worker processes\)"),
    (RICH, {**ENGINE, "workers": 2}, "rich", None),
    # spill_dir: used by the suffix chain's windows (engine local, LocalCluster), by the counts waiting for
    # the refit (carved lines) and by the mapped model (max_memory)
    (RICH, SPILLDIR, "rich", None),
    (RICH_FILES, SPILLDIR, "rich", None), (RICH_MEM, SPILLDIR, "rich", None),
    ({**RICH_FILES, **ENGINE}, SPILLDIR, "rich", None),
    (RICH_FILES, {**SCHED, **SPILLDIR}, "rich",
     "spill_dir /nonexistent " + RICH_NO + r" \(on a Dask cluster at a scheduler address the "
     "suffix chain's windows are spilled on the cluster"),
    ({**RICH_MEM, **ENGINE}, SPILLDIR, "rich", None),
    (RICH, MEM, "rich", None), (RICH, READ, "rich", "workers_read " + RICH_NO + r" \(this process"),
    (RICH, CHUNK, "rich", None), (RICH, {"workers": 1}, "rich", None),
    (NGRAM, WORKERS, "ngram", r"workers 2 is not supported on the in-memory n-gram route \(ngram\)"
     "; drop it .* or add engine dask"), (NGRAM, ENGINE, "ngram-dask", None),
    (NGRAM, SCHED, "ngram-dask", None), (NGRAM, SPILLDIR, "ngram", "add max_memory SIZE"),
    (NGRAM, MEM, "ngram-bounded", None), (NGRAM, READ, "ngram", "it is for engine dask"),
    (NGRAM, CHUNK, "ngram", None),
    (BOUNDED, WORKERS, "ngram-bounded", "use engine dask instead of max_memory"),
    (BOUNDED, ENGINE, "ngram-dask", r"max_memory 1G is not supported on the n-gram on Dask"),
    (BOUNDED, SPILLDIR, "ngram-bounded", None), (BOUNDED, MEM, "ngram-bounded", None),
    (BOUNDED, READ, "ngram-bounded", "workers_read is not"), (BOUNDED, CHUNK, "ngram-bounded", None),
    (NDASK, WORKERS, "ngram-dask", None), (NDASK, SCHED, "ngram-dask", None),
    (NDASK, {**SCHED, "workers": 2}, "ngram-dask", r"workers 2 is not supported on the n-gram on "
     r"Dask route \(ngram-dask\); drop it \(the cluster at scheduler brings its own"),
    (DASK, {**SCHED, "workers": 2}, "dask", r"workers 2 is not supported on the Dask counting "
     r"route \(dask\); drop it \(the cluster at scheduler brings its own"),
    (NDASK, SPILLDIR, "ngram-dask", r"spill_dir /nonexistent .* \(Dask spills by its own"),
    (NDASK, MEM, "ngram-dask", "max_memory 1G .* or use engine local"),
    (NDASK, READ, "ngram-dask", None), (NDASK, CHUNK, "ngram-dask", None),
    (SPILL, WORKERS, "spilling", None), (SPILL, ENGINE, "dask", None),
    (SPILL, SPILLDIR, "spilling", None), (SPILL, MEM, "spilling", None),
    (SPILL, READ, "spilling", r"\(spilling\); drop it \(it is for engine dask"),
    (SPILL, CHUNK, "spilling", None),
    (DASK, WORKERS, "dask", None), (DASK, SCHED, "dask", None), (DASK, MEM, "dask", None),
    (DASK, SPILLDIR, "dask", r"\(dask\); drop it \(Dask spills"), (DASK, READ, "dask", "workers_read"),
    (DASK, CHUNK, "dask", None),
    (TRANSFORMER, WORKERS, "neural", r"neural route \(neural\); drop it \(the network trains"),
    (TRANSFORMER, MEM, "neural", "max_memory 1G"), (TRANSFORMER, CHUNK, "neural", "chunk_lines 100"),
    (RESIDUAL, MEM, "neural", None), (RESIDUAL, READ, "neural", "workers_read " + RICH_NO),
    (RESIDUAL, CHUNK, "neural", None),
    (RESIDUAL_OF, CHUNK, "neural", "chunk_lines 100 is not supported on the neural"),
]


@pytest.mark.parametrize("model, scale, name, refusal", CASES,
                         ids=[f"{c[2]}-{'+'.join(c[1])}-{'ok' if c[3] is None else 'refused'}"
                              for c in CASES])
def test_every_scale_option_takes_effect_or_is_refused(model, scale, name, refusal):
    cfg = TrainConfig.from_kwargs(**{**model, **scale})
    assert route(cfg) == name
    if refusal is None:
        assert check_scale(cfg) == name
    else:
        with pytest.raises(OptionError, match=refusal) as e:
            check_scale(cfg)
        assert "\n" not in str(e.value)


def test_refused_scale_option_is_one_line_exit_2_before_any_work(tmp_path, capsys):
    from lmkit.cli import main
    out = tmp_path / "m"
    code = main(["train", "--engine", "dask", "--scheduler", "tcp://127.0.0.1:1", "--workers",
                 "64", "--spill-dir", "/nonexistent", "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert err.strip().splitlines() == ["lmkit: error: --workers 64 is not supported on the default "
                                        "(feature-rich) route; drop it (the cluster at --scheduler "
                                        "brings its own worker processes)"]
    assert main(["train", "--engine", "dask", "--scheduler", "tcp://127.0.0.1:1",
                 "--spill-dir", str(tmp_path), "--output", str(out)]) == 2
    assert "--spill-dir " + str(tmp_path) + " is not supported" in capsys.readouterr().err
    assert not out.exists()


def test_manifest_records_only_the_options_that_took_effect(tiny_corpus_file, tiny_tok_file,
                                                            tmp_path, capsys):
    opts = dict(input=[str(tiny_corpus_file)], tokenizer=str(tiny_tok_file), verbose=True)
    ngram = lmkit.train(order=3, chunk_lines=50, **opts)
    assert "route ngram: in-memory n-gram" in capsys.readouterr().err  # the [1/4] banner
    assert ngram.config["chunk_lines"] == 50
    assert not {"workers", "engine", "scheduler", "spill_dir", "max_memory",
                "workers_read"} & set(ngram.config)
    spilled = lmkit.train(context=1, workers=2, max_memory="1G", spill_dir=str(tmp_path), **opts)
    assert {k: spilled.config[k] for k in ("workers", "max_memory", "spill_dir")} == \
        {"workers": 2, "max_memory": "1G", "spill_dir": str(tmp_path)}
    assert "engine" not in spilled.config and "workers_read" not in spilled.config


def test_the_build_summary_says_what_was_built(tiny_corpus_file, tiny_tok_file):
    from lmkit.train import describe_build
    opts = dict(input=[str(tiny_corpus_file)], tokenizer=str(tiny_tok_file), verbose=False)
    model = lmkit.train(**opts)  # the default, feature-rich model
    text = describe_build(model)
    m = re.fullmatch(r"sparse model, V=300, (\d+) groups: 4 suffix \(MKN order 5\), 2 window, "
                     r"4 skip, (\d+) cluster \((.*) clusters\), 2 linepos; (\d+) weights \(group x "
                     r"entry-count bucket\) in \[(\S+), (\S+)\], fitted on (\d+) held-out tokens: "
                     r"ppl (\S+) -> (\S+)", text)
    assert m, text
    info, G = model.params.info, len(model.groups)
    lam = np.asarray(info["entry_lambdas"])
    assert int(m[1]) == G and int(m[4]) == lam.size == G * 5 and "lambdas=" not in text
    assert (m[5], m[6]) == (f"{lam.min():.3g}", f"{lam.max():.3g}")
    assert int(m[7]) == info["heldout_tokens"] > 0
    trace = info["lambda_trace"]
    assert (m[8], m[9]) == (f"{np.exp(trace[0][1]):.2f}", f"{np.exp(trace[-1][1]):.2f}")
    assert float(m[9]) < float(m[8])  # the fit lowered the held-out perplexity
    pure = describe_build(lmkit.train(order=3, **opts))
    assert pure == "sparse model, V=300, 2 groups: 2 suffix (MKN order 3); lambdas 1 (exact " \
                   "interpolated Kneser-Ney)"
    given = describe_build(lmkit.train(context=2, lambdas=[1, 0.5], **opts))
    assert given.endswith("2 groups: 2 window; lambdas given: 1,0.5")


def test_docs_table_of_routes_is_the_code_s():
    from pathlib import Path

    from lmkit.train import HONOURS, SCALE_OPTIONS
    text = (Path(__file__).resolve().parents[1] / "docs" / "routes.md").read_text()
    rows = {m[0]: m[1] for m in
            (re.findall(r"^\| `([a-z-]+)` \| (.*) \|$", text, flags=re.M))}
    assert set(rows) == set(HONOURS)
    for r, cells in rows.items():
        said = {o for o, c in zip(SCALE_OPTIONS, cells.split(" | ")) if c == "yes"}
        assert said == HONOURS[r], r


def test_routes_refuse_or_keep_what_the_bounded_build_would_drop(tiny_corpus_file, tiny_tok_file):
    """The bounded n-gram build neither fine-tunes nor prunes: solver gradient with order fails
    before any work, and entropy pruning within max_memory takes the spilling route, pruned."""
    with pytest.raises(OptionError, match="handles context \\(window\\) groups only"):
        route(TrainConfig.from_kwargs(order=3, solver="gradient", max_memory="1G"))
    from lmkit.ngram.prune import n_ngrams
    opts = dict(input=[str(tiny_corpus_file)], tokenizer=str(tiny_tok_file), order=3,
                verbose=False)
    assert route(TrainConfig.from_kwargs(prune_entropy=1e-3, max_memory="1G", **opts)) == "spilling"
    full = lmkit.train(max_memory="1G", **opts)
    pruned = lmkit.train(prune_entropy=1e-3, max_memory="1G", **opts)
    assert n_ngrams(pruned) < n_ngrams(full)
