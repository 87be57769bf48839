"""The search over the penalty weight c of Szegedy et al.'s minimum distortion, against
fake solves that succeed at chosen values of c: nothing is trained or solved."""

import jax.numpy as jnp
import numpy as np
import pytest

from lib.adversarial import attacks

GRID = (10.0, 3.0, 1.0, 0.3, 0.1, 0.03, 0.01)


def search(succeeds, n=1, refine=6):
    """search_c with `succeeds(c) -> bool` per image (n of them); returns (c_hit, c_miss)
    and every c tried, per image."""
    tried = [[] for _ in range(n)]

    def attempt(c):
        c = np.asarray(c)
        for i in range(n):
            tried[i].append(float(c[i]))
        return jnp.asarray([succeeds(i, float(c[i])) for i in range(n)])

    c_hit, c_miss = attacks.search_c(attempt, n, GRID, refine)
    return np.asarray(c_hit), np.asarray(c_miss), tried


def test_a_success_above_a_failure_moves_the_bracket_up():
    """Success at 0.01 and 0.1 only: after the grid the bracket is (0.1, 0.3), and every
    refining round tries a new c inside it."""
    hits = {0.01, 0.1}
    c_hit, c_miss, tried = search(lambda i, c: any(np.isclose(c, h) for h in hits))
    refined = tried[0][len(GRID) :]
    assert refined[0] == pytest.approx(np.sqrt(0.1 * 0.3))
    assert len(set(refined)) == len(refined) == 6
    assert all(0.1 < c < 0.3 for c in refined), refined
    assert c_hit[0] == pytest.approx(0.1) and 0.1 < c_miss[0] < 0.11


def test_the_bracket_closes_on_a_threshold():
    """Success for every c up to a threshold (the usual case): the bracket keeps it
    inside and halves in log c each round."""
    thresholds = (0.2, 5.0, 0.02)
    c_hit, c_miss, _ = search(lambda i, c: c <= thresholds[i], n=3)
    for i, threshold in enumerate(thresholds):
        assert c_hit[i] <= threshold < c_miss[i]
        assert np.log(c_miss[i] / c_hit[i]) < np.log(10 / 3) / 2**6 * 1.01


def test_images_not_yet_reached_try_a_smaller_c_every_round():
    """Success only below the grid: each round tries a tenth of the last c until one
    succeeds; an image that never succeeds tries a new c every round."""
    c_hit, c_miss, tried = search(lambda i, c: i == 0 and c <= 2e-5, n=2)
    np.testing.assert_allclose(
        tried[1][len(GRID) :], [1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8], rtol=1e-6
    )
    assert c_hit[1] == 0 and c_miss[1] == pytest.approx(1e-8)
    # Image 0 succeeds at 1e-5 (the third round), then bisects toward its 2e-5.
    assert c_hit[0] <= 2e-5 < c_miss[0] and c_hit[0] > 1e-5


def test_update_bracket_keeps_the_largest_success_below_the_smallest_failure_above_it():
    c_hit, c_miss = jnp.array([0.01]), jnp.array([0.03])
    c_hit, c_miss = attacks.update_bracket(jnp.array([0.1]), jnp.array([True]), c_hit, c_miss)
    assert float(c_hit[0]) == pytest.approx(0.1) and float(c_miss[0]) == np.inf
    c_hit, c_miss = attacks.update_bracket(jnp.array([0.3]), jnp.array([False]), c_hit, c_miss)
    assert float(c_miss[0]) == pytest.approx(0.3)


def test_no_penalty_weights_are_refused():
    with pytest.raises(ValueError, match="c_values must be positive"):
        attacks.search_c(lambda c: c > 0, 1, (), 2)
