"""Counting on a Dask LocalCluster (2 workers) equals local counting exactly."""
import pytest

from lmkit.features import make_groups
from lmkit.parallel import count_corpus_parallel

pytest.importorskip("dask.distributed")

from lmkit.distributed import count_corpus_dask  # noqa: E402


def test_dask_localcluster_equals_local(tiny_lines, tiny_tok):
    groups = make_groups(2, 3)  # window and suffix groups: suffix keys must merge too
    local = count_corpus_parallel(tiny_lines, tiny_tok, groups, chunk_lines=40, workers=1)
    dask = count_corpus_dask(iter(tiny_lines), tiny_tok, groups, chunk_lines=40, n_workers=2,
                             processes=False)
    assert dask.equals(local)
    assert dask.n_sequences == len(tiny_lines)


def test_dask_empty_corpus_gives_empty_counts(tiny_tok):
    c = count_corpus_dask([], tiny_tok, make_groups(1), n_workers=2, processes=False)
    assert c.n_tokens == 0 and c.F[0].nnz == 0
