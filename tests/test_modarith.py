"""Vectorised modular arithmetic agrees with Python's integers, at the edges too."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from heagg.crypto.modarith import add_mod, centered, limb_moduli, mul_mod, reduce_signed, sub_mod
from heagg.crypto.sampling import gaussian_integers, uniform_mod

# the primes of both presets, and the largest modulus the long-double trick supports
PRIMES = [1152921504606830593, 1152921504606748673, 1152921504606683137, 2**61 - 1]


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(PRIMES),
    st.lists(st.tuples(st.integers(0, 2**62), st.integers(0, 2**62)), min_size=1, max_size=50),
)
def test_add_sub_mul_match_python_integers(q, pairs):
    a = np.array([x % q for x, _ in pairs] + [q - 1, 0, 1], dtype=np.uint64)
    b = np.array([y % q for _, y in pairs] + [q - 1, q - 1, 0], dtype=np.uint64)
    m = np.uint64(q)
    for got, op in (
        (add_mod(a, b, m), lambda x, y: x + y),
        (sub_mod(a, b, m), lambda x, y: x - y),
        (mul_mod(a, b, m), lambda x, y: x * y),
    ):
        assert [int(v) for v in got] == [op(int(x), int(y)) % q for x, y in zip(a, b, strict=True)]


def test_limbs_reduce_modulo_their_own_prime():
    moduli = limb_moduli(PRIMES[:2])
    a = np.stack([np.full(8, PRIMES[0] - 1, dtype=np.uint64), np.full(8, PRIMES[1] - 1, dtype=np.uint64)])
    out = mul_mod(a, a, moduli)
    assert int(out[0, 0]) == 1 and int(out[1, 0]) == 1  # (-1)^2 = 1 modulo each prime


def test_reduce_signed_and_centered_invert_each_other():
    values = np.array([[-5, 0, 7, -(2**40), 2**40]], dtype=np.int64)
    reduced = reduce_signed(values, limb_moduli(PRIMES[:2]))
    for j, q in enumerate(PRIMES[:2]):
        np.testing.assert_array_equal(centered(reduced[0, j], q), values[0])


def test_uniform_mod_stays_below_q_and_covers_the_range():
    q = PRIMES[0]
    values = uniform_mod(q, 200_000)
    assert values.max() < q
    # top bit-range populated as often as a uniform distribution predicts (no modulo bias toward small values)
    frac_high = np.mean(values > np.uint64(q // 2))
    assert abs(frac_high - 0.5) < 0.01


def test_gaussian_integers_have_the_requested_sigma():
    z = gaussian_integers(2.0**34, (200_000,))
    assert z.dtype == np.int64
    assert abs(z.std() / 2**34 - 1) < 0.01
    assert abs(z.mean()) < 5 * 2**34 / np.sqrt(z.size)
    assert not np.array_equal(z, gaussian_integers(2.0**34, (200_000,)))
