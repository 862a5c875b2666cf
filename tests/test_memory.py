"""lmkit.memory: handing freed heap pages back to the system between tasks."""
import sys

import pytest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_release_heap_hands_back_the_holes_freed_blocks_leave():
    """Blocks freed between blocks still alive leave holes the C heap keeps resident (a task's
    arrays, freed when it ends); ``release_heap`` gives them back: the resident set drops by
    most of the freed bytes. A no-op (no error) where the C library has no malloc_trim."""
    from lmkit import memory
    from lmkit.distributed import own_rss
    memory.release_heap()
    if memory._LIBC[0] is None:
        pytest.skip("this C library has no malloc_trim")
    blocks = [bytearray(50_000) for _ in range(3000)]  # 150 MB, below the mmap threshold
    for b in blocks:
        b[::4096] = b"x" * len(b[::4096])  # every page touched: resident
    kept = blocks[::10]  # pins the heap: what is freed between them cannot shrink its top
    del blocks
    before = own_rss()
    memory.release_heap()
    assert before - own_rss() > 80 << 20
    assert len(kept) == 300
