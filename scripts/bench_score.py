"""Document scoring speed: `lmkit score` (1 and 2 workers) vs the usual KenLM loop, same model.

The KenLM side is what filtering pipelines (CCNet-style) run: one process, for each document
``sp.encode(line, out_type=str)`` then ``kenlm.Model.perplexity(" ".join(pieces))`` on an ARPA
written by ``lmkit export-arpa --words pieces`` from the same lmkit model. Both sides read the
same lines (one document per line), and both sides' per-document perplexities are checked to
agree. lmkit's time includes loading the model, building its scoring tables and starting its
workers; the in-process KenLM row's excludes loading the ARPA (and importing kenlm and
SentencePiece). Both run in this process, the first round loading what loads once (the compiled
kernels' object code, ~0.03 s, ``lmkit/native.py``). ``--cli`` adds two rows of whole fresh
processes: the ``lmkit score`` command, and the same KenLM loop as a script (``KENLM_SCRIPT``:
Python's start, ``import kenlm, sentencepiece``, the model's load, reading the file, the loop),
timed as the whole child (CPU s = its user + sys); the script loads the ``build_binary`` file of
the ARPA with ``--kenlm-bin DIR`` (KenLM's fast load: a mapped file), else the ARPA itself (a
parse: seconds). Its perplexities must equal the in-process loop's, bit for bit, and the two
fresh rows are compared on their own line under the table. `--workers 1` reads and encodes
the next chunks in a second thread while it scores (SentencePiece and the compiled walk
release the GIL), so it can use up to two cores: the CPU columns show it. Besides wall-clock rates the table gives CPU
seconds (user + sys of the process and its workers): on a shared machine the wall clock
measures the other tenants too, so the load average is printed before and after.

    python scripts/bench_score.py --model DIR [--split train | --input FILE] [--repeat 1 2]
                                  [--workers 1 2] [--rounds 3] [--out /tmp/bench] [--cli]
                                  [--kenlm-bin DIR] [--baseline TREE] [--query]

One table per ``--repeat`` value (the documents repeated that many times: ``--repeat 1 2`` is
the default corpus's train split, 124k documents, then 248k).

``--query`` adds a table of the query alone (documents encoded beforehand): KenLM's
``perplexity`` loop vs lmkit's ``log_proba_ids`` on the compiled MKN trie walk
(``ngram/score.py``, its tables built first, as ``lmkit score`` does, and included) and on the
numpy route. ``--baseline TREE`` adds the same ``lmkit score`` command run from another
checkout (a before/after in one run; every lmkit row must write the same bytes).

The model for issue 21's target: `lmkit train --order 5 --output o5` (an MKN model).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from array import array
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmkit.corpus import load_corpus  # noqa: E402
from lmkit.docscore import score_file  # noqa: E402
from lmkit.model import LanguageModel  # noqa: E402
from lmkit.ngram.arpa import write_arpa  # noqa: E402


# the KenLM loop as a whole process (--cli): argv = model, SentencePiece model, documents, output
KENLM_SCRIPT = '''import sys
from array import array
import kenlm
import sentencepiece as spm
km = kenlm.Model(sys.argv[1])
sp = spm.SentencePieceProcessor(model_file=sys.argv[2])
with open(sys.argv[3], encoding="utf-8") as f:
    lines = f.read().split("\\n")[:-1]
ppl = [km.perplexity(" ".join(sp.encode(line, out_type=str))) for line in lines]
with open(sys.argv[4], "wb") as f:
    array("d", ppl).tofile(f)
'''


def cpu_seconds() -> float:
    """user + sys seconds of this process and its reaped children (the scoring workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="an n-gram model folder (lmkit train --order N)")
    ap.add_argument("--split", default="train",
                    help="shakespeare split to score, one document per line (default train)")
    ap.add_argument("--input", default=None,
                    help="a UTF-8 text file to score instead of a split (one document per "
                         "non-blank line)")
    ap.add_argument("--repeat", type=int, nargs="+", default=[1, 2],
                    help="copies of the documents, one table each (default: 1 2)")
    ap.add_argument("--cli", action="store_true",
                    help="add two rows: the lmkit score command in a fresh process, --workers 1 "
                         "(interpreter start, imports and the compiled code's load included), "
                         "and the KenLM loop as a script in a fresh process (its imports and "
                         "model load included)")
    ap.add_argument("--kenlm-bin", default=None, metavar="DIR",
                    help="a folder with KenLM's build_binary: the fresh KenLM process loads the "
                         "binary form of the ARPA (else the ARPA)")
    ap.add_argument("--baseline", default=None, metavar="TREE",
                    help="add a row: the same command run from another lmkit checkout (e.g. "
                         "the main branch), for a before/after side by side")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                    help="lmkit score --workers values to run (default: 1 2)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="runs of every scorer, interleaved; the table shows the median "
                         "(default 3)")
    ap.add_argument("--out", default="/tmp/bench_score", help="scratch folder")
    ap.add_argument("--query", action="store_true",
                    help="also time the n-gram query alone on already-encoded documents: "
                         "KenLM's perplexity per document vs lmkit's log_proba_ids (compiled "
                         "trie walk, its table build included, and the numpy route)")
    a = ap.parse_args()
    if a.kenlm_bin and not a.cli:
        ap.error("--kenlm-bin is for the fresh KenLM process's row: add --cli")
    import kenlm
    import sentencepiece as spm

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.input:
        from lmkit.corpus import read_lines, sequences
        base, source = list(sequences(read_lines(a.input), None)), a.input
    else:
        base, source = list(load_corpus(split=a.split)), f"shakespeare:{a.split}"
    model = LanguageModel.load(a.model)
    write_arpa(model, out / "m.arpa", words="pieces")
    km = kenlm.Model(str(out / "m.arpa"))
    sp = spm.SentencePieceProcessor(model_proto=model.tokenizer.model_proto)
    if a.cli:  # the fresh KenLM process's script, tokenizer and model file
        (out / "kenlm_loop.py").write_text(KENLM_SCRIPT, encoding="utf-8")
        (out / "tokenizer.model").write_bytes(model.tokenizer.model_proto)
        a.kenlm_file = out / "m.arpa"
        if a.kenlm_bin:
            a.kenlm_file = out / "m.binary"
            subprocess.run([str(Path(a.kenlm_bin) / "build_binary"), str(out / "m.arpa"),
                            str(a.kenlm_file)], check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    for repeat in a.repeat:
        bench(a, base * repeat, f"lines of {source} x{repeat}", out, km, sp)
        print()
    if a.query:
        query_table(a, base * a.repeat[-1], sp, km)


def bench(a, lines, what, out, km, sp) -> None:
    """One side-by-side table on ``lines`` (one document each)."""
    (out / "docs.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    n_tok = sum(len(x) + 1 for x in sp.encode(lines))
    load0 = open("/proc/loadavg").read().split()[0]

    def kenlm_loop():
        return [km.perplexity(" ".join(sp.encode(line, out_type=str))) for line in lines]

    def lmkit_score(w):
        r = score_file(a.model, out / f"scores{w}.jsonl", input=[str(out / "docs.txt")],
                       workers=w, progress=False)
        assert r["units"] == len(lines) and r["tokens"] == n_tok
        return r

    def lmkit_cli(tree, name):
        # run in the tree: `python -m` puts the working folder first on sys.path, ahead of
        # PYTHONPATH, so run from another checkout it would import that checkout's lmkit
        env = {**os.environ, "PYTHONPATH": str(tree)}
        subprocess.run([sys.executable, "-m", "lmkit.cli", "score", str(Path(a.model).resolve()),
                        "--input", str((out / "docs.txt").resolve()), "--output",
                        str((out / f"scores-{name}.jsonl").resolve()), "--workers", "1"],
                       env=env, cwd=tree, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)

    def kenlm_fresh():
        subprocess.run([sys.executable, str(out / "kenlm_loop.py"), str(a.kenlm_file),
                        str(out / "tokenizer.model"), str(out / "docs.txt"),
                        str(out / "kenlm-fresh.f64")], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)

    runs: dict = {}  # name -> [(seconds, CPU seconds)]
    names = ["kenlm loop (1 process)"] + [f"lmkit score --workers {w}" for w in a.workers]
    fresh_ken = ("kenlm loop, fresh process (binary)" if a.kenlm_bin
                 else "kenlm loop, fresh process (ARPA)")
    names += [fresh_ken, "lmkit score CLI, fresh process"] if a.cli else []
    names += ["baseline tree CLI, fresh process"] if a.baseline else []
    ken = None
    for _ in range(a.rounds):  # interleaved, so a busy spell on the machine hits every scorer
        for name in names:
            t0, c0 = time.perf_counter(), cpu_seconds()
            if name == fresh_ken:
                kenlm_fresh()
            elif name.startswith("kenlm"):
                ken = kenlm_loop()
            elif name.startswith("baseline"):
                lmkit_cli(Path(a.baseline).resolve(), "baseline")
            elif name.endswith("fresh process"):
                lmkit_cli(Path(__file__).resolve().parents[1], "cli")
            else:
                lmkit_score(int(name.rsplit(" ", 1)[1]))
            runs.setdefault(name, []).append((time.perf_counter() - t0, cpu_seconds() - c0))
    first = (out / f"scores{a.workers[0]}.jsonl").read_bytes()
    for w in a.workers[1:]:  # any number of workers writes the same bytes
        assert (out / f"scores{w}.jsonl").read_bytes() == first, f"--workers {w} differs"
    for name in ("cli", "baseline") if a.baseline else ("cli",) if a.cli else ():
        assert (out / f"scores-{name}.jsonl").read_bytes() == first, f"{name} output differs"
    for w in a.workers:  # same per-document perplexities as KenLM (same model, same ids)
        mine = [json.loads(x)["perplexity"] for x in (out / f"scores{w}.jsonl").open()]
        worst = max(abs(math.log10(x) - math.log10(y)) for x, y in zip(mine, ken))
        assert worst < 1e-4, f"per-document log10 perplexity differs by {worst}"
    if a.cli:  # the fresh KenLM process computed what the in-process loop did, to the bit
        fresh = array("d", (out / "kenlm-fresh.f64").read_bytes())
        assert fresh.tolist() == ken, "the fresh KenLM process's perplexities differ"

    med = {k: (statistics.median(t for t, _ in v), statistics.median(c for _, c in v))
           for k, v in runs.items()}
    t_ken, c_ken = med[names[0]]
    print(f"{len(lines)} documents ({what}), {n_tok} tokens, model {a.model}; median of "
          f"{a.rounds} interleaved rounds; {os.cpu_count()} cores, load average {load0} before, "
          f"{open('/proc/loadavg').read().split()[0]} after")
    print(f"| {'scorer':<34} | {'docs/s':>9} | {'tokens/s':>10} | {'vs kenlm':>8} | "
          f"{'CPU s':>6} | {'docs/CPU-s':>10} | {'vs kenlm':>8} |")
    print(f"|{'-' * 36}|{'-' * 11}|{'-' * 12}|{'-' * 10}|{'-' * 8}|{'-' * 12}|{'-' * 10}|")
    for name in names:
        t, c = med[name]
        print(f"| {name:<34} | {len(lines) / t:>9,.0f} | {n_tok / t:>10,.0f} | "
              f"{t_ken / t:>7.2f}x | {c:>6.2f} | {len(lines) / c:>10,.0f} | {c_ken / c:>7.2f}x |")
    if a.cli:  # both whole processes: start-up, imports and model load on each side
        t_kf, c_kf = med[fresh_ken]
        for name in names:
            if name.endswith("CLI, fresh process"):
                t, c = med[name]
                print(f"{name} vs {fresh_ken}: {t_kf / t:.2f}x docs/s (wall), "
                      f"{c_kf / c:.2f}x docs per CPU second")
    if 1 in a.workers:
        t1, c1 = med["lmkit score --workers 1"]
        for w in a.workers:
            if w > 1:
                t, c = med[f"lmkit score --workers {w}"]
                print(f"--workers {w} vs --workers 1: {t1 / t:.2f}x docs/s (wall), "
                      f"{c1 / c:.2f}x docs per CPU second")


def query_table(a, lines, sp, km) -> None:
    """CPU seconds of the query alone (documents encoded beforehand), median of ``a.rounds``
    interleaved rounds, in chunks of docscore's size. lmkit's compiled route loads the model
    afresh every round, so its derived tables are built inside the timing."""
    from lmkit import docscore, scoring
    pieces = [" ".join(x) for x in sp.encode(lines, out_type=str)]
    seqs = sp.encode(lines)
    chunk = docscore.CHUNK_UNITS

    def lmkit_query(compiled):
        scoring.USE_COMPILED = compiled
        try:
            m = LanguageModel.load(a.model)
            m.prepare(sum(map(len, seqs)) + len(seqs))  # as lmkit score: tables up front
            return [m.log_proba_ids(seqs[i:i + chunk]) for i in range(0, len(seqs), chunk)]
        finally:
            scoring.USE_COMPILED = True

    names = {"kenlm perplexity loop": lambda: [km.perplexity(x) for x in pieces],
             "lmkit log_proba_ids (walk, tables built first)": lambda: lmkit_query(True),
             "lmkit log_proba_ids (numpy route)": lambda: lmkit_query(False)}
    cpu: dict = {}
    for _ in range(a.rounds):
        for name, f in names.items():
            c0 = time.process_time()
            f()
            cpu.setdefault(name, []).append(time.process_time() - c0)
    base = statistics.median(cpu["kenlm perplexity loop"])
    print(f"\nquery only ({len(lines)} documents encoded beforehand; CPU s of this process, "
          f"median of {a.rounds})")
    print(f"| {'query':<46} | {'CPU s':>6} | {'us/doc':>7} | {'vs kenlm':>8} |")
    print(f"|{'-' * 48}|{'-' * 8}|{'-' * 9}|{'-' * 10}|")
    for name, v in cpu.items():
        c = statistics.median(v)
        print(f"| {name:<46} | {c:>6.2f} | {c / len(lines) * 1e6:>7.2f} | {base / c:>7.2f}x |")


if __name__ == "__main__":
    main()
