"""Contract of upft.prefix_vote: the most frequent L-token prefix, ties to the prefix drawn first,
agreement = share of all samples."""
import pytest

import upft


def test_majority_of_l_token_prefixes():
    winner, agreement = upft.prefix_vote([[1, 2, 3], [1, 2, 4], [5, 6, 7]], 2)
    assert winner == [1, 2] and isinstance(winner, list), f"expected [1, 2] (a list), got {winner!r}"
    assert agreement == pytest.approx(2 / 3), f"2 of 3 samples share [1, 2]: agreement 2/3, got {agreement}"


def test_only_the_first_l_tokens_vote():
    samples = [[4, 4, 9, 1], [8, 8, 8, 8], [4, 4, 0, 2], [8, 8, 8, 8], [4, 4, 3, 3]]
    assert upft.prefix_vote(samples, 2) == ([4, 4], pytest.approx(0.6)), \
        "with L = 2, three samples start [4, 4] (they differ later): [4, 4] wins with 3/5"
    assert upft.prefix_vote(samples, 3) == ([8, 8, 8], pytest.approx(0.4)), \
        "with L = 3, [8, 8, 8] is the only 3-token prefix drawn twice"
    assert upft.prefix_vote([[5, 1, 2, 3], [5, 1, 2, 9], [7, 0, 0, 0]], 1) == ([5], pytest.approx(2 / 3)), \
        "L = 1: the first token votes"


def test_ties_go_to_the_prefix_drawn_first_not_to_token_ids():
    assert upft.prefix_vote([[9, 9, 0], [1, 1, 0], [1, 1, 5], [9, 9, 2]], 2) == ([9, 9], 0.5), \
        "tie between [9, 9] (drawn first) and [1, 1]: the first drawn wins, whatever the ids"
    assert upft.prefix_vote([[1, 1, 0], [9, 9, 0], [9, 9, 5], [1, 1, 2]], 2) == ([1, 1], 0.5), \
        "tie between [1, 1] (drawn first) and [9, 9]: the first drawn wins"
    assert upft.prefix_vote([[5, 0], [3, 0], [7, 0], [7, 1], [3, 1], [5, 1]], 1)[0] == [5], \
        "three-way tie: the prefix of sample 0 wins"
    assert upft.prefix_vote([[2, 8], [6, 3], [4, 4]], 2) == ([2, 8], pytest.approx(1 / 3)), \
        "all different: the first sample wins with agreement 1/3"


def test_short_samples_are_their_own_prefixes():
    assert upft.prefix_vote([[7], [7], [7, 8]], 2) == ([7], pytest.approx(2 / 3)), \
        "a sample that stopped after 1 token has the prefix [7], which differs from [7, 8]"
    assert upft.prefix_vote([[3, 4]], 8) == ([3, 4], 1.0), "one sample shorter than L: itself, agreement 1"
    assert upft.prefix_vote([[3, 4, 5, 6]], 2) == ([3, 4], 1.0), "one sample: its L-token prefix, agreement 1"


def test_no_samples_is_an_error():
    with pytest.raises(ValueError):
        upft.prefix_vote([], 4)
