"""lmkit's default (feature-rich) model vs KenLM at scale, side by side in one run.

Both sides get the same text and the same SentencePiece ids (one tokenizer, given with
``--tokenizer`` or trained once, untimed). Each build runs as its own process tree:

- lmkit: ``lmkit train --input TRAIN --tokenizer TOK [LMKIT_ARGS]`` (no model option: the
  default model), test perplexity from ``lmkit eval --json``;
- KenLM: ``lmkit spm-encode`` + ``lmplz -o 5`` + ``build_binary`` (probing), test perplexity
  from ``query``; with ``--orders`` also lmplz at each of those orders (quality only), to
  compare the default model with KenLM's *best* order.

CPU s = user + sys of the whole process tree (``wait4`` of the child: its reaped worker
processes and lmplz's threads included). Peak RSS = the largest sum of the resident set
sizes of the process and all its descendants, sampled every ``--every`` seconds (psutil), so
a build with 2 workers is charged for all three processes; peak PSS = the same sum of
proportional set sizes (a page shared by forked workers, as the token buffer, is split
among them instead of counted once per process: what the tree really holds). The largest
single process's maximum RSS (``ru_maxrss``) is given too. Both perplexities count one
end-of-line token per line (KenLM's ``</s>``, lmkit's EOS), natural log internally,
reported as perplexity.

    python scripts/bench_scale_default.py --input TRAIN.txt --test TEST.txt \\
        [--tokenizer TOK.model] [--kenlm-bin DIR] [--orders 3 4 5 6] \\
        [--lmkit-args "--max-memory 2G"] [--test-lines 20000] [--workdir DIR] [--json] \\
        [--variants "--workers 2" "--max-memory 1G" "--engine dask --workers 2"]
    python scripts/bench_scale_default.py --corpus shakespeare --kenlm-bin DIR

``--variants``: more builds of the same default model with other scale flags (each one row,
after the plain build; its test perplexity and the max |d log p| against the plain build on
the first 2000 test lines: the routes must give the same model). With ``--compare-tree`` each
variant is built with that tree too (a before/after row per variant). Without ``--kenlm-bin`` only
lmkit's rows are printed. Progress on stderr, the table (or
``--json``) on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def tree_rss(proc: psutil.Process) -> tuple[int, int]:
    """Resident and proportional set bytes of ``proc`` and every descendant, summed (0 for
    those gone meanwhile). RSS counts a page shared by forked workers once per process; PSS
    (``smaps_rollup``) splits it among them, so its sum is what the tree really holds."""
    rss = pss = 0
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.Error:
        return 0, 0
    for p in procs:
        try:
            m = p.memory_full_info()
            rss, pss = rss + m.rss, pss + m.pss
        except psutil.Error:
            pass
    return rss, pss


def run_tree(cmd: list, stdin=None, stdout=None, env=None, every: float = 0.1) -> dict:
    """Run ``cmd``; CPU s of its whole tree, peak summed RSS (MB), largest process RSS, wall s."""
    t0 = time.time()
    with open(stdin, "rb") if stdin else open(os.devnull, "rb") as fin, \
            open(stdout, "wb") if stdout else tempfile.TemporaryFile() as fout, \
            tempfile.TemporaryFile() as ferr:
        # a neutral working folder: `python -m lmkit.cli` puts its working folder first on
        # sys.path, so run from a checkout it would import that checkout, not PYTHONPATH's
        p = subprocess.Popen([str(c) for c in cmd], stdin=fin, stdout=fout, stderr=ferr, env=env,
                             cwd=tempfile.gettempdir())
        peak, stop = [0, 0], threading.Event()

        def sample():
            ps = psutil.Process(p.pid)
            while not stop.is_set():
                peak[:] = [max(a, b) for a, b in zip(peak, tree_rss(ps))]
                stop.wait(every)
        th = threading.Thread(target=sample, daemon=True)
        th.start()
        try:
            # wait4: this child's own rusage (its reaped descendants included), not the maximum
            # over every child this benchmark has run so far
            _, status, ru = os.wait4(p.pid, 0)
            rc = p.returncode = os.waitstatus_to_exitcode(status)
        finally:
            stop.set()
            th.join()
            if p.poll() is None:
                p.kill()
                p.wait()
        ferr.seek(0)
        err = ferr.read().decode(errors="replace")
        out = ""
        if not stdout:
            fout.seek(0)
            out = fout.read().decode(errors="replace")
    if rc != 0:
        raise SystemExit(f"failed ({rc}): {' '.join(map(str, cmd))}\n{err[-3000:]}")
    cpu = ru.ru_utime + ru.ru_stime
    return {"cpu": cpu, "rss_mb": peak[0] / 2**20, "pss_mb": peak[1] / 2**20,
            "max_proc_rss_mb": ru.ru_maxrss / 1024,
            "wall": time.time() - t0, "stdout": out, "stderr": err}


def combine(*steps) -> dict:
    """Steps run one after the other: CPU adds up, peak RSS is the largest."""
    return {"cpu": sum(s["cpu"] for s in steps), "rss_mb": max(s["rss_mb"] for s in steps),
            "pss_mb": max(s["pss_mb"] for s in steps),
            "max_proc_rss_mb": max(s["max_proc_rss_mb"] for s in steps),
            "wall": sum(s["wall"] for s in steps), "parts": [round(s["cpu"], 2) for s in steps]}


def write_test(src: Path, dst: Path, max_lines: int) -> int:
    """Non-empty lines of ``src`` (every k-th, k chosen for about ``max_lines``) -> ``dst``."""
    from lmkit.corpus import load_corpus
    lines = list(load_corpus(input=[str(src)]))
    step = max(1, len(lines) // max_lines) if max_lines else 1
    keep = lines[::step][:max_lines] if max_lines else lines
    dst.write_text("".join(x + "\n" for x in keep), encoding="utf-8")
    return len(keep)


def write_named(corpus: str, work: Path) -> tuple[Path, Path]:
    from lmkit.corpus import load_corpus
    tr, te = work / "train.txt", work / "test.txt"
    tr.write_text("".join(x + "\n" for x in load_corpus(corpus=corpus, split="train")),
                  encoding="utf-8")
    te.write_text("".join(x + "\n" for x in load_corpus(corpus=corpus, split="test")),
                  encoding="utf-8")
    return tr, te


def kenlm_ppl(kb: Path, order: int, work: Path, memory: str) -> tuple[dict, dict, float]:
    """lmplz -o ORDER + build_binary on train.ids; query on test.ids: (lmplz, binary, ppl)."""
    arpa, binary = work / f"k{order}.arpa", work / f"k{order}.bin"
    lm = run_tree([kb / "lmplz", "-o", order, "-S", memory, "-T", work, "--discount_fallback"],
                  stdin=work / "train.ids", stdout=arpa)
    bb = run_tree([kb / "build_binary", arpa, binary])
    arpa.unlink()
    q = run_tree([kb / "query", "-v", "summary", binary], stdin=work / "test.ids")
    binary.unlink()
    m = re.search(r"Perplexity including OOVs:\s*([0-9.]+)", q["stdout"])
    return lm, bb, float(m.group(1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--corpus", default="shakespeare", help="named corpus (train/test splits)")
    src.add_argument("--input", help="training text file (with --test)")
    ap.add_argument("--test", help="test text file (with --input)")
    ap.add_argument("--test-lines", type=int, default=20000,
                    help="score about this many evenly spread test lines (0: all)")
    ap.add_argument("--tokenizer", help="a tokenizer .model (default: train one, untimed)")
    ap.add_argument("--kenlm-bin", help="folder with lmplz, build_binary, query")
    ap.add_argument("--build-order", type=int, default=5, help="the timed lmplz order")
    ap.add_argument("--orders", type=int, nargs="*", default=[3, 4, 5, 6],
                    help="lmplz orders for the quality check (best one reported)")
    ap.add_argument("--lmplz-memory", default="40%", help="lmplz -S (default 40%%)")
    ap.add_argument("--lmkit-args", default="", help="extra `lmkit train` flags, one string")
    ap.add_argument("--compare-tree", help="also build with the lmkit of this source tree (e.g. "
                    "a checkout of main), same flags, for a before/after row")
    ap.add_argument("--variants", nargs="*", default=[],
                    help="more `lmkit train` flag strings, one row each (same model expected)")
    ap.add_argument("--every", type=float, default=0.1, help="RSS sampling period, seconds")
    ap.add_argument("--workdir", help="keep the files here (default: a temp folder, removed)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if bool(a.input) != bool(a.test):
        ap.error("--input and --test go together")
    for k in ("input", "test", "tokenizer", "kenlm_bin", "workdir", "compare_tree"):
        if getattr(a, k):  # the builds run in another folder (run_tree)
            setattr(a, k, str(Path(getattr(a, k)).resolve()))
    py = [sys.executable, "-m", "lmkit.cli"]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    work = Path(a.workdir or tempfile.mkdtemp(prefix="bench-scale-default-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if a.input:
            train = Path(a.input)
        else:
            train, _ = write_named(a.corpus, work)
        n_test = write_test(Path(a.test) if a.input else work / "test.txt", work / "test_eval.txt",
                            a.test_lines)
        tok = Path(a.tokenizer) if a.tokenizer else work / "tok.model"
        if not a.tokenizer:
            log("tokenizer: training on the train text (untimed)")
            run_tree(py + ["spm-train", "--input", train, "--output", work / "tok"], env=env)
        extra = shlex.split(a.lmkit_args)
        res = {"corpus": a.input or a.corpus, "lmkit_args": a.lmkit_args, "test_lines": n_test,
               "cores": os.cpu_count()}
        log(f"[1/3] lmkit train (default model) {a.lmkit_args}")
        res["lmkit_build"] = run_tree(py + ["train", "--input", train, "--tokenizer", tok,
                                            *extra, "--output", work / "default"], env=env,
                                      every=a.every)
        env_c = {**os.environ, "PYTHONPATH": str(Path(a.compare_tree or REPO).resolve())}
        if a.compare_tree:
            log(f"[1b] lmkit train (default model) from {a.compare_tree}")
            res["compare_build"] = run_tree(py + ["train", "--input", train, "--tokenizer", tok,
                                                  *extra, "--output", work / "compare"],
                                            env=env_c, every=a.every)
            ev = run_tree(py + ["eval", work / "compare", "--input", work / "test_eval.txt",
                                "--json"], env=env)
            res["compare_ppl"] = json.loads(ev["stdout"])["perplexity"]
            res["compare_tree"] = a.compare_tree
            res["max_abs_dlogp"] = max_dlogp(work / "default", work / "compare",
                                             work / "test_eval.txt", 2000)
        res["variants"] = []
        trees = [(None, env)] + ([(a.compare_tree, env_c)] if a.compare_tree else [])
        for i, v in enumerate(a.variants):
            for tree, env_v in trees:  # each variant with this tree, then the compared one
                log(f"[1v] lmkit train (default model) {a.lmkit_args} {v}"
                    + (f" from {tree}" if tree else ""))
                folder = work / f"variant{i}"
                row = {"args": v, "tree": tree}
                try:
                    b = run_tree(py + ["train", "--input", train, "--tokenizer", tok, *extra,
                                       *shlex.split(v), "--output", folder], env=env_v,
                                 every=a.every)
                except SystemExit as e:  # a refusal (e.g. a limit too small) is a result too
                    line = [x for x in str(e).splitlines() if x.startswith("lmkit: error:")]
                    res["variants"].append({**row, "error": (line or [str(e)])[-1]})
                    continue
                ev = run_tree(py + ["eval", folder, "--input", work / "test_eval.txt",
                                    "--json"], env=env)
                b.update(row, ppl=json.loads(ev["stdout"])["perplexity"],
                         max_abs_dlogp=max_dlogp(work / "default", folder,
                                                 work / "test_eval.txt", 2000))
                res["variants"].append({k: x for k, x in b.items()
                                        if k not in ("stdout", "stderr")})
                shutil.rmtree(folder, ignore_errors=True)
        log("[2/3] lmkit eval")
        ev = run_tree(py + ["eval", work / "default", "--input", work / "test_eval.txt",
                            "--json"], env=env)
        out = json.loads(ev["stdout"])
        res["lmkit_ppl"], res["test_tokens"] = out["perplexity"], out["tokens"]
        if a.kenlm_bin:
            kb = Path(a.kenlm_bin)
            log(f"[3/3] KenLM: encode + lmplz -o {a.build_order} + build_binary; orders "
                f"{a.orders} for quality")
            enc = run_tree(py + ["spm-encode", "--model", tok, "--input", train, "--output",
                                 work / "train.ids"], env=env)
            run_tree(py + ["spm-encode", "--model", tok, "--input", work / "test_eval.txt",
                           "--output", work / "test.ids"], env=env)
            ppl = {}
            for order in sorted(set(a.orders) | {a.build_order}):
                log(f"      lmplz -o {order}")
                lm, bb, ppl[order] = kenlm_ppl(kb, order, work, a.lmplz_memory)
                if order == a.build_order:
                    res["kenlm_build"] = combine(enc, lm, bb)
            res["kenlm_ppl"] = {str(k): v for k, v in ppl.items()}
            best = min(ppl, key=lambda o: ppl[o])  # over every order measured
            res["kenlm_best_order"], res["kenlm_best_ppl"] = best, ppl[best]
            with open(work / "test.ids") as f:
                res["kenlm_test_tokens"] = sum(len(x.split()) + 1 for x in f)
            (work / "train.ids").unlink()
        for k in list(res):
            if isinstance(res[k], dict):
                res[k] = {x: (round(v, 3) if isinstance(v, float) else v)
                          for x, v in res[k].items() if x not in ("stdout", "stderr")}
        res["variants"] = [{x: (round(y, 3) if isinstance(y, float) and x != "max_abs_dlogp"
                                else y) for x, y in v.items()} for v in res["variants"]]
        print(json.dumps(res, indent=1) if a.json else table(res))
    finally:
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def max_dlogp(model_a: Path, model_b: Path, text: Path, n_lines: int) -> float:
    """max |log p_a - log p_b| (natural log) over every token of the first ``n_lines`` lines."""
    import numpy as np
    from lmkit.model import LanguageModel
    from lmkit.scoring import context_rows, sparse_log_proba
    lines = text.read_text(encoding="utf-8").splitlines()[:n_lines]
    out = []
    for path in (model_a, model_b):
        m = LanguageModel.load(path)
        tok, p = m.tokenizer, m.params
        seqs = tok.encode_batch(lines)
        rows, targets, _ = context_rows(p.groups, p.keys, seqs, tok.vocab_size, tok.bos_id,
                                        tok.eos_id)
        out.append(sparse_log_proba(p, rows, targets))
    return float(np.abs(out[0] - out[1]).max())


def table(r: dict) -> str:
    lb = r["lmkit_build"]
    rows = [f"# corpus {r['corpus']}, {r['cores']} cores, lmkit train {r['lmkit_args'] or '(defaults)'}; "
            f"test: {r['test_lines']} lines, {r['test_tokens']} tokens",
            "| build | CPU s | peak RSS MB (tree) | peak PSS MB (tree) | largest process MB | "
            "wall s | test ppl |",
            "|---|---|---|---|---|---|---|",
            f"| the lmkit default model | {lb['cpu']:.1f} | {lb['rss_mb']:.0f} | {lb['pss_mb']:.0f} | "
            f"{lb['max_proc_rss_mb']:.0f} | {lb['wall']:.1f} | {r['lmkit_ppl']:.2f} |"]
    for v in r.get("variants", []):
        src = f" from {v['tree']}" if v.get("tree") else ""
        if "error" in v:
            rows.append(f"| the lmkit default model {v['args']}{src} | refused: {v['error']} "
                        "| | | | | |")
            continue
        rows.append(f"| the lmkit default model {v['args']}{src} | {v['cpu']:.1f} | {v['rss_mb']:.0f} | "
                    f"{v['pss_mb']:.0f} | "
                    f"{v['max_proc_rss_mb']:.0f} | {v['wall']:.1f} | {v['ppl']:.2f} |")
    if "compare_build" in r:
        cb = r["compare_build"]
        rows.append(f"| the lmkit default model from {r['compare_tree']} | {cb['cpu']:.1f} | "
                    f"{cb['rss_mb']:.0f} | {cb['pss_mb']:.0f} | {cb['max_proc_rss_mb']:.0f} | {cb['wall']:.1f} | "
                    f"{r['compare_ppl']:.2f} |")
    if "kenlm_build" in r:
        kb = r["kenlm_build"]
        rows.append(f"| encode + lmplz -o 5 + build_binary (parts {kb['parts']}) | "
                    f"{kb['cpu']:.1f} | {kb['rss_mb']:.0f} | {kb['pss_mb']:.0f} | "
                    f"{kb['max_proc_rss_mb']:.0f} | "
                    f"{kb['wall']:.1f} | {r['kenlm_ppl']['5']:.2f} |")
        rows.append("")
        rows.append("KenLM test ppl by order: " + ", ".join(
            f"{k}: {v:.2f}" for k, v in r["kenlm_ppl"].items())
            + f" (test tokens {r['kenlm_test_tokens']})")
        rows.append(f"build CPU ratio lmkit/KenLM: {lb['cpu'] / kb['cpu']:.2f}x; peak RSS ratio: "
                    f"{lb['rss_mb'] / kb['rss_mb']:.2f}x")
        rows.append(f"quality: lmkit ppl / KenLM best order ({r['kenlm_best_order']}) ppl = "
                    f"{r['lmkit_ppl'] / r['kenlm_best_ppl']:.3f}")
    for v in r.get("variants", []):
        if "error" in v:
            continue
        src = f" from {v['tree']}" if v.get("tree") else ""
        rows.append(f"{v['args']}{src} / plain: build CPU {v['cpu'] / lb['cpu']:.2f}x, wall "
                    f"{v['wall'] / lb['wall']:.2f}x, peak RSS (tree) "
                    f"{v['rss_mb'] / lb['rss_mb']:.2f}x, peak PSS (tree) "
                    f"{v['pss_mb'] / lb['pss_mb']:.2f}x; max |d log p| on the first 2000 test "
                    f"lines: {v['max_abs_dlogp']:.3g}")
    mine = {v["args"]: v for v in r.get("variants", []) if not v.get("tree") and "error" not in v}
    for v in r.get("variants", []):
        if v.get("tree") and "error" not in v and v["args"] in mine:
            m = mine[v["args"]]
            rows.append(f"{v['args']}: this tree / {v['tree']}: build CPU "
                        f"{m['cpu'] / v['cpu']:.2f}x, peak PSS (tree) "
                        f"{m['pss_mb'] / v['pss_mb']:.2f}x")
    if "compare_build" in r:
        rows.append(f"this tree / {r['compare_tree']}: build CPU "
                    f"{lb['cpu'] / r['compare_build']['cpu']:.2f}x, peak RSS (tree) "
                    f"{lb['rss_mb'] / r['compare_build']['rss_mb']:.2f}x; max |d log p| on the "
                    f"first 2000 test lines: {r['max_abs_dlogp']:.3g}")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
