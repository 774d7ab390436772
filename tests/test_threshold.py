"""Threshold CKKS: t-of-n decryption of sums, t-1 shares give nothing, flooding on and effective."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tenseal import sealapi

from heagg.crypto import seal_format
from heagg.crypto.modarith import centered, mul_mod, sub_mod
from heagg.crypto.threshold import combine, lagrange_coefficients, partial_decrypt
from heagg.crypto.vectors import encrypt_vector, sum_encrypted
from heagg.errors import DecryptionFailed, NotEnoughShares


def site_vectors(k: int, length: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, length) for _ in range(k)]


def threshold_decrypt(c, aggregate, subset, *, sigma=None):
    sigma = c.consortium.sigma if sigma is None else sigma
    partials = [
        partial_decrypt(c.ctx, c.shares[i], aggregate.c1, subset, length=aggregate.length, sigma=sigma) for i in subset
    ]
    return combine(
        c.ctx, aggregate, partials, threshold=c.consortium.threshold, value_bound=c.consortium.slot_bound * 4
    )


def seal_decrypt(c, aggregate) -> np.ndarray:
    """SEAL's own decryption with the ceremony key (only tests keep it)."""
    seal_ctx = c.key.private_context.seal_context().data
    decryptor = sealapi.Decryptor(seal_ctx, c.key.private_context.secret_key().data)
    mem = seal_format.MemFile()
    out = []
    for k in range(aggregate.chunks):
        blob = seal_format.build_ciphertext(c.ctx.parms_id, aggregate.data[k], ntt=True, scale=c.ctx.scale)
        cipher = mem.load(sealapi.Ciphertext(seal_ctx), seal_ctx, blob)
        plain = sealapi.Plaintext()
        decryptor.decrypt(cipher, plain)
        slots = np.asarray(sealapi.CKKSEncoder(seal_ctx).decode_complex(plain))
        out.append(np.concatenate([slots.real, slots.imag]))
    return np.concatenate(out)[: aggregate.length] if out else np.zeros(0)


@pytest.mark.parametrize(("n", "t"), [(3, 2), (5, 3), (7, 4)])
def test_every_subset_of_size_at_least_t_decrypts_the_sum(ceremony, n, t):
    c = ceremony(n, t)
    vectors = site_vectors(n, 5000, seed=n)
    aggregate = sum_encrypted(c.ctx, (encrypt_vector(c.ctx, v) for v in vectors))
    truth = np.sum(vectors, axis=0)
    reference = seal_decrypt(c, aggregate)
    assert np.max(np.abs(reference - truth)) < 1e-9  # SEAL's own decryption, no flooding
    for size in range(t, n + 1):
        for subset in itertools.combinations(range(1, n + 1), size):
            out = threshold_decrypt(c, aggregate, subset)
            bound = c.consortium.sum_error_bound(decryptors=size)
            assert out.shape == truth.shape
            assert np.max(np.abs(out - truth)) <= bound, (subset, np.max(np.abs(out - truth)), bound)
            assert np.max(np.abs(out - reference)) <= bound
            # flooding is on: the result is not bit-for-bit SEAL's
            assert np.max(np.abs(out - reference)) > 0


def test_threshold_result_equals_seal_decryption_without_flooding(ceremony):
    """With sigma = 0 (never used outside tests) the threshold path is exactly SEAL's decryption."""
    c = ceremony(5, 3)
    vectors = site_vectors(5, 9000, seed=11)
    aggregate = sum_encrypted(c.ctx, (encrypt_vector(c.ctx, v) for v in vectors))
    out = threshold_decrypt(c, aggregate, (2, 4, 5), sigma=0)
    np.testing.assert_array_equal(out, seal_decrypt(c, aggregate))


def test_t_minus_one_shares_give_output_uncorrelated_with_the_sum(ceremony):
    c = ceremony(5, 3)
    vectors = site_vectors(5, 4 * c.ctx.degree, seed=3)
    truth = np.sum(vectors, axis=0)
    aggregate = sum_encrypted(c.ctx, (encrypt_vector(c.ctx, v) for v in vectors))
    for subset in itertools.combinations(range(1, 6), 2):
        partials = [
            partial_decrypt(c.ctx, c.shares[i], aggregate.c1, subset, length=aggregate.length, sigma=c.consortium.sigma)
            for i in subset
        ]
        # the honest API refuses to combine too few partials ...
        with pytest.raises(NotEnoughShares):
            combine(c.ctx, aggregate, partials, threshold=3)
        # ... and refuses a result out of range, so t-1 shares never look like success
        with pytest.raises(DecryptionFailed):
            combine(c.ctx, aggregate, partials, threshold=2, value_bound=c.consortium.slot_bound * 4)
        # an attacker combining anyway gets values uncorrelated with the sum, far beyond its range
        out = combine(c.ctx, aggregate, partials, threshold=2)
        r = np.corrcoef(out, truth)[0, 1]
        assert abs(r) < 5 / np.sqrt(truth.size), r
        assert np.median(np.abs(out)) > 10 * np.max(np.abs(truth))

    # even a one-value vector: its padding slots expose a wrong result
    one = encrypt_vector(c.ctx, np.array([0.5]))
    partials = [partial_decrypt(c.ctx, c.shares[i], one.c1, (1, 2), length=1, sigma=c.consortium.sigma) for i in (1, 2)]
    with pytest.raises(DecryptionFailed):
        combine(c.ctx, one, partials, threshold=2, value_bound=c.consortium.slot_bound * 4)


def test_partials_for_another_decrypting_set_do_not_combine(ceremony):
    c = ceremony(5, 3)
    aggregate = encrypt_vector(c.ctx, np.ones(10))
    sigma = c.consortium.sigma
    a = partial_decrypt(c.ctx, c.shares[1], aggregate.c1, (1, 2, 3), length=10, sigma=sigma)
    b = partial_decrypt(c.ctx, c.shares[2], aggregate.c1, (1, 2, 4), length=10, sigma=sigma)
    d = partial_decrypt(c.ctx, c.shares[3], aggregate.c1, (1, 2, 3), length=10, sigma=sigma)
    with pytest.raises(NotEnoughShares):
        combine(c.ctx, aggregate, [a, b, d], threshold=3)
    with pytest.raises(NotEnoughShares):
        combine(c.ctx, aggregate, [a, a, d], threshold=3)
    with pytest.raises(NotEnoughShares):
        combine(c.ctx, aggregate, [], threshold=3)


def _recovered_share(c, partial_data, c1, subset, index):
    """The attack on noiseless partials: d_i / (lambda_i * c1) modulo each prime."""
    lam = lagrange_coefficients(index, subset, c.ctx.primes)
    denominator = mul_mod(c1, np.broadcast_to(lam, c1.shape).copy(), c.ctx.moduli)
    out = np.empty_like(partial_data)
    for j, q in enumerate(c.ctx.primes):
        for pos in np.ndindex(denominator.shape[0]):
            inv = np.array([pow(int(x), -1, q) for x in denominator[pos][j]], dtype=np.uint64)
            out[pos][j] = mul_mod(partial_data[pos][j], inv, c.ctx.moduli[j])
    return out


@pytest.mark.parametrize("preset", ["compact", "precise"])
def test_without_flooding_the_share_leaks_and_with_flooding_it_does_not(ceremony, preset):
    c = ceremony(3, 2, preset)
    aggregate = encrypt_vector(c.ctx, np.linspace(-1, 1, 50))
    subset, index = (1, 3), 3
    share = c.shares[index].limbs
    noiseless = partial_decrypt(c.ctx, c.shares[index], aggregate.c1, subset, length=50, sigma=0)
    leaked = _recovered_share(c, noiseless.data, aggregate.c1, subset, index)
    np.testing.assert_array_equal(leaked[0], share)  # the whole share, from one noiseless partial
    flooded = partial_decrypt(c.ctx, c.shares[index], aggregate.c1, subset, length=50, sigma=c.consortium.sigma)
    guess = _recovered_share(c, flooded.data, aggregate.c1, subset, index)
    assert np.mean(guess[0] == share) < 1e-3


@pytest.mark.parametrize("preset", ["compact", "precise"])
def test_flooding_noise_has_the_preset_sigma_and_is_one_integer_polynomial(ceremony, preset):
    c = ceremony(3, 2, preset)
    aggregate = encrypt_vector(c.ctx, np.zeros(6 * c.ctx.degree))
    subset, index = (1, 2), 1
    sigma = c.consortium.sigma
    flooded = partial_decrypt(c.ctx, c.shares[index], aggregate.c1, subset, length=aggregate.length, sigma=sigma)
    noiseless = partial_decrypt(c.ctx, c.shares[index], aggregate.c1, subset, length=aggregate.length, sigma=0)
    noise_ntt = sub_mod(flooded.data, noiseless.data, c.ctx.moduli)
    noise = c.ctx.from_ntt(noise_ntt)  # back to the coefficient domain with SEAL's transform
    per_prime = [centered(noise[:, j], q) for j, q in enumerate(c.ctx.primes)]
    for other in per_prime[1:]:
        np.testing.assert_array_equal(other, per_prime[0])  # the same integers modulo every prime
    values = per_prime[0].astype(np.float64).ravel()
    assert abs(values.std() / sigma - 1) < 0.03, values.std() / sigma
    assert abs(values.mean()) < 5 * sigma / np.sqrt(values.size)
    assert np.all(values == np.rint(values))
    # and it differs between requests (fresh from the CSPRNG)
    again = partial_decrypt(c.ctx, c.shares[index], aggregate.c1, subset, length=aggregate.length, sigma=sigma)
    assert not np.array_equal(again.data, flooded.data)


@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_property_any_length_and_subset_round_trips(ceremony, data):
    c = ceremony(5, 3)
    n = c.ctx.degree
    length = data.draw(
        st.one_of(st.sampled_from([0, 1, n // 2 - 1, n // 2, n // 2 + 1, n - 1, n, n + 1]), st.integers(0, 3 * n))
    )
    k = data.draw(st.integers(1, 4))
    subset = tuple(sorted(data.draw(st.sets(st.integers(1, 5), min_size=3, max_size=5))))
    seed = data.draw(st.integers(0, 2**32 - 1))
    vectors = site_vectors(k, length, seed)
    aggregate = sum_encrypted(c.ctx, (encrypt_vector(c.ctx, v) for v in vectors))
    assert aggregate.chunks == -(-length // n)
    out = threshold_decrypt(c, aggregate, subset)
    truth = np.sum(vectors, axis=0) if length else np.zeros(0)
    assert out.shape == (length,)
    if length:
        assert np.max(np.abs(out - truth)) <= c.consortium.sum_error_bound(decryptors=len(subset))
