import pytest

from lmkit.errors import InputError
from lmkit.features import (Suffix, Window, decode_suffix_key, group_from_name, make_groups,
                            pad_sequences)

V, BOS, EOS = 6, 1, 2


def test_pad_sequences_docstring_example():
    buf, pos, starts = pad_sequences([[5, 6]], 2, 1, 2)
    assert buf.tolist() == [1, 1, 5, 6, 2]
    assert pos.tolist() == [2, 3, 4]
    assert starts.tolist() == [2, 2, 2]


def test_pad_sequences_two_sequences_and_empty():
    buf, pos, starts = pad_sequences([[3, 4, 3], [], [4]], 2, BOS, EOS)
    assert buf.tolist() == [1, 1, 3, 4, 3, 2, 1, 1, 2, 1, 1, 4, 2]
    assert pos.tolist() == [2, 3, 4, 5, 8, 11, 12]
    assert starts.tolist() == [2, 2, 2, 2, 8, 11, 11]
    assert buf[pos].tolist() == [3, 4, 3, 2, 2, 4, 2]  # ids then EOS; BOS is never a target


def test_window_and_suffix_keys_hand_checked():
    buf, pos, starts = pad_sequences([[3, 4, 3], [4]], 2, BOS, EOS)
    # buf = [1,1,3,4,3,2, 1,1,4,2]; targets at 2,3,4,5,8,9
    assert Window(1).row_keys(buf, pos, starts, V).tolist() == [1, 3, 4, 3, 1, 4]
    assert Window(2).row_keys(buf, pos, starts, V).tolist() == [1, 1, 3, 4, 1, 1]
    assert Suffix(1).row_keys(buf, pos, starts, V).tolist() == [1, 3, 4, 3, 1, 4]
    # key = tok[t-2] + tok[t-1] * V; a history may hold one BOS but not two
    assert Suffix(2).row_keys(buf, pos, starts, V).tolist() == [-1, 1 + 3 * 6, 3 + 4 * 6,
                                                                4 + 3 * 6, -1, 1 + 4 * 6]


def test_decode_suffix_key():
    assert decode_suffix_key(21, 2, 10) == [1, 2]
    assert decode_suffix_key(3 + 4 * 6, 2, 6) == [3, 4]


def test_suffix_key_overflow_is_refused():
    buf, pos, starts = pad_sequences([[3]], 5, BOS, EOS)
    with pytest.raises(InputError, match=r"suffix\(5\) keys need vocab_size\*\*5 < 2\*\*63"):
        Suffix(5).row_keys(buf, pos, starts, 2 ** 13)


def test_make_groups():
    assert make_groups(2, 3) == [Suffix(1), Suffix(2), Window(1), Window(2)]
    assert make_groups(3) == [Window(1), Window(2), Window(3)]
    assert make_groups(0, 3) == [Suffix(1), Suffix(2)]


@pytest.mark.parametrize("context, order, match", [
    (0, None, r"--context must be >= 1 \(or give --order N\)"),
    (-1, None, r"--context must be >= 0, got -1"),
    (-1, 3, r"--context must be >= 0, got -1"),
    (2, 1, r"--order must be >= 2, got 1"),
])
def test_make_groups_refuses(context, order, match):
    with pytest.raises(InputError, match=match):
        make_groups(context, order)


def test_group_names_round_trip():
    for g in [Window(1), Window(12), Suffix(3)]:
        assert group_from_name(g.name) == g
    with pytest.raises(ValueError, match="unknown feature group"):
        group_from_name("bigram")
