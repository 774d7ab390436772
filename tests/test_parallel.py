"""Encryption and partial decryption in a process pool do what the serial functions do."""

from __future__ import annotations

import numpy as np
import pytest

from heagg.crypto.modarith import centered, sub_mod
from heagg.crypto.parallel import CryptoPool, chunk_ranges, encrypt_vector_parallel, partial_decrypt_parallel
from heagg.crypto.threshold import combine, partial_decrypt
from heagg.crypto.vectors import encrypt_vector
from heagg.errors import NotEnoughShares, UsageError


@pytest.fixture(scope="module")
def setup(ceremony):
    c = ceremony(3, 2)
    with CryptoPool(c.ctx, 2) as pool:
        pool.warm_up()
        yield c, pool


def _values(c, chunks: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, int(chunks * c.ctx.degree))


def _decrypt(c, vector, subset=(1, 2), *, sigma=None):
    sigma = c.consortium.sigma if sigma is None else sigma
    partials = [
        partial_decrypt(c.ctx, c.shares[i], vector.c1, subset, length=vector.length, sigma=sigma) for i in subset
    ]
    return combine(c.ctx, vector, partials, threshold=2)


@pytest.mark.parametrize("chunks", [0.3, 2.5, 9])
def test_chunk_ranges_cover_every_chunk_once_in_order(chunks):
    n = int(np.ceil(chunks))
    for pieces in (1, 2, 3, 8, 100):
        ranges = chunk_ranges(n, pieces)
        assert [a for a, _ in ranges] == [0] + [b for _, b in ranges[:-1]]
        assert ranges[-1][1] == n and all(b > a for a, b in ranges)
        assert len(ranges) == min(pieces, n)


def test_parallel_encryption_decrypts_to_the_values(setup):
    c, pool = setup
    values = _values(c, 5.5)  # several pieces per worker, and a partial last chunk
    vector = pool.encrypt_vector(values.astype(np.float32))
    serial = encrypt_vector(c.ctx, values.astype(np.float32))
    assert vector.length == serial.length == values.size
    assert vector.data.shape == serial.data.shape and vector.data.dtype == np.uint64
    exact = _decrypt(c, vector, sigma=0)  # no flooding: only the encryption's own error
    np.testing.assert_allclose(exact, values.astype(np.float32), atol=1e-9)
    flooded = _decrypt(c, vector)
    assert np.max(np.abs(flooded - values.astype(np.float32))) <= c.consortium.sum_error_bound(2)
    # every chunk is a fresh encryption: no chunk repeats another encryption of the same values
    assert not np.any(np.all(vector.data == serial.data, axis=(1, 2, 3)))


def test_parallel_partial_decryption_equals_the_serial_one_without_flooding(setup):
    c, pool = setup
    vector = encrypt_vector(c.ctx, _values(c, 6, seed=1))
    for index in (1, 3):
        parallel = pool.partial_decrypt(c.shares[index], vector.c1, (1, 3), length=vector.length, sigma=0)
        serial = partial_decrypt(c.ctx, c.shares[index], vector.c1, (1, 3), length=vector.length, sigma=0)
        assert (parallel.index, parallel.decrypting_set, parallel.length) == (index, (1, 3), vector.length)
        np.testing.assert_array_equal(parallel.data, serial.data)


def test_parallel_flooding_is_fresh_per_chunk_and_decrypts_within_the_bound(setup):
    c, pool = setup
    values = _values(c, 8, seed=2)
    vector = encrypt_vector(c.ctx, values)
    sigma = c.consortium.sigma
    partials = [pool.partial_decrypt(c.shares[i], vector.c1, (2, 3), length=vector.length, sigma=sigma) for i in (2, 3)]
    decrypted = combine(c.ctx, vector, partials, threshold=2)
    error = np.max(np.abs(decrypted - values))
    assert 0 < error <= c.consortium.sum_error_bound(2)
    # the noise each worker added, back in the coefficient domain: one independent Gaussian polynomial per chunk
    clean = partial_decrypt(c.ctx, c.shares[2], vector.c1, (2, 3), length=vector.length, sigma=0)
    noise = c.ctx.from_ntt(sub_mod(partials[0].data, clean.data, c.ctx.moduli))
    coefficients = centered(noise[:, 0], c.ctx.primes[0]).astype(np.float64)
    assert np.std(coefficients) == pytest.approx(sigma, rel=0.05)
    assert len({row.tobytes() for row in coefficients}) == vector.chunks
    assert abs(np.corrcoef(coefficients[0], coefficients[-1])[0, 1]) < 0.1


def test_one_worker_runs_the_serial_functions_in_process(setup):
    c, _ = setup
    values = _values(c, 1.5, seed=3)
    with CryptoPool(c.ctx, 1) as pool:
        assert pool._executor is None
        vector = pool.encrypt_vector(values)
        part = pool.partial_decrypt(c.shares[1], vector.c1, (1, 2), length=vector.length, sigma=0)
    serial = partial_decrypt(c.ctx, c.shares[1], vector.c1, (1, 2), length=vector.length, sigma=0)
    np.testing.assert_array_equal(part.data, serial.data)
    np.testing.assert_allclose(_decrypt(c, vector, sigma=0), values, atol=1e-9)
    again = encrypt_vector_parallel(c.ctx, values, 1)
    np.testing.assert_allclose(_decrypt(c, again, sigma=0), values, atol=1e-9)
    alone = partial_decrypt_parallel(c.ctx, c.shares[1], vector.c1, (1, 2), length=vector.length, sigma=0, workers=1)
    np.testing.assert_array_equal(alone.data, serial.data)


def test_module_functions_use_a_given_pool(setup):
    c, pool = setup
    values = _values(c, 3, seed=4)
    vector = encrypt_vector_parallel(c.ctx, values, 2, pool=pool)
    part = partial_decrypt_parallel(
        c.ctx, c.shares[2], vector.c1, (1, 2), length=vector.length, sigma=0, workers=2, pool=pool
    )
    serial = partial_decrypt(c.ctx, c.shares[2], vector.c1, (1, 2), length=vector.length, sigma=0)
    np.testing.assert_array_equal(part.data, serial.data)


def test_bad_inputs_fail_in_the_caller(setup):
    c, pool = setup
    vector = encrypt_vector(c.ctx, _values(c, 2, seed=5))
    with pytest.raises(NotEnoughShares):
        pool.partial_decrypt(c.shares[3], vector.c1, (1, 2), length=vector.length, sigma=0)
    with pytest.raises(ValueError, match="NaN"):
        pool.encrypt_vector(np.array([1.0, np.nan] * 3000))
    with pytest.raises(UsageError):
        CryptoPool(c.ctx, 0)
    empty = pool.encrypt_vector(np.zeros(0))
    assert empty.length == 0 and empty.chunks == 0
