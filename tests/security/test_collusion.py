"""The aggregator colluding with t-1 sites learns nothing about the sum or any update; and why consent exists.

In process, with what a real run has: the ceremony's public context, its share files (opened as a site opens
them), real ciphertexts of five sites' updates, their real sum, and honest partial decryptions (with flooding).
The coalition is the aggregator plus sites 1 and 2 of a 3-of-5 consortium: it holds the aggregate, each
site's ciphertext, every public key, two shares and the two partials those sites made for a decrypting set
{1, 2, 3}. Every way of combining them it has is tried, and the best linear combination of all of them too:
none is correlated with the sum or with site 5's update. The same code with a third share recovers the sum
within the error bound, so the test would notice an attack that worked.
"""

from __future__ import annotations

import numpy as np

from heagg.crypto.modarith import add_mod, mul_mod
from heagg.crypto.threshold import combine, lagrange_coefficients, partial_decrypt
from heagg.crypto.vectors import EncryptedVector, encrypt_vector, sum_encrypted
from heagg.sitekeys import load_site_keys

from .campaign import CAMPAIGN

COALITION = (1, 2)
DECRYPTING_SET = (1, 2, 3)


def _decode(ctx, c0: np.ndarray, extra: list[np.ndarray]) -> np.ndarray:
    """c0 plus the given polynomials (all chunks, NTT form), decoded as CKKS plaintexts."""
    plain = c0.copy()
    for term in extra:
        add_mod(plain, term, ctx.moduli, out=plain)
    return np.concatenate([ctx.decode_reals(plain[k]) for k in range(plain.shape[0])])


def _times_share(ctx, c1: np.ndarray, limbs: np.ndarray, coefficient: np.ndarray | None = None) -> np.ndarray:
    weighted = limbs if coefficient is None else mul_mod(limbs, coefficient, ctx.moduli)
    return mul_mod(c1, np.broadcast_to(weighted, c1.shape).copy(), ctx.moduli)


def _guesses(ctx, target: EncryptedVector, shares: dict, partials: list) -> dict[str, np.ndarray]:
    """Everything the coalition can compute towards decrypting ``target``."""
    c0, c1 = target.c0, target.c1
    own = lagrange_coefficients  # the coefficients of a set of size t-1, as if the threshold were t-1
    out = {
        "c0 alone (no key)": _decode(ctx, c0, []),
        "the t-1 honest partials": _decode(ctx, c0, [p.data for p in partials]),
        "t-1 shares, noiseless, for the real set": _decode(
            ctx,
            c0,
            [_times_share(ctx, c1, shares[i], lagrange_coefficients(i, DECRYPTING_SET, ctx.primes)) for i in COALITION],
        ),
        "t-1 shares interpolated as if t-1 sufficed": _decode(
            ctx, c0, [_times_share(ctx, c1, shares[i], own(i, COALITION, ctx.primes)) for i in COALITION]
        ),
    }
    for i in COALITION:
        out[f"share {i} taken for the key"] = _decode(ctx, c0, [_times_share(ctx, c1, shares[i])])
    return {name: values[: target.length] for name, values in out.items()}


def _best_linear_combination(guesses: dict[str, np.ndarray], truth: np.ndarray) -> float:
    """Out-of-sample correlation of the least-squares combination of all guesses (fit on half, test on half)."""
    features = np.column_stack([*guesses.values(), np.ones_like(truth)])
    half = truth.size // 2
    weights, *_ = np.linalg.lstsq(features[:half], truth[:half], rcond=None)
    return float(np.corrcoef(features[half:] @ weights, truth[half:])[0, 1])


def test_the_aggregator_with_t_minus_1_shares_learns_nothing_about_the_sum_or_an_update(ceremony):
    c = ceremony(5, 3)
    ctx, sigma = c.ctx, c.consortium.sigma
    shares = {i: load_site_keys(c.keys_dir, f"site-{i}", passphrase=None).share for i in range(1, 6)}
    rng = np.random.default_rng(2024)
    updates = [rng.uniform(-1, 1, 2 * ctx.degree) for _ in range(5)]
    ciphertexts = [encrypt_vector(ctx, u) for u in updates]
    aggregate = sum_encrypted(ctx, ciphertexts)
    truth = np.sum(updates, axis=0)
    partials = {
        i: partial_decrypt(ctx, shares[i], aggregate.c1, DECRYPTING_SET, length=aggregate.length, sigma=sigma)
        for i in DECRYPTING_SET
    }
    # the control: with the third partial, the same data decrypt the sum within the error bound
    recovered = combine(ctx, aggregate, list(partials.values()), threshold=3)
    assert np.max(np.abs(recovered - truth)) <= c.consortium.sum_error_bound()

    limit = 5 / np.sqrt(truth.size)  # |correlation| of unrelated vectors stays below this (5 sigma)
    limbs = {i: shares[i].limbs for i in COALITION}
    targets = [
        ("the sum", aggregate, [partials[i] for i in COALITION], truth),
        ("site 5's update", ciphertexts[4], [], updates[4]),  # no share holder ever decrypts one update
    ]
    for what, target, coalition_partials, secret in targets:
        guesses = _guesses(ctx, target, limbs, coalition_partials)
        for name, guess in guesses.items():
            CAMPAIGN.tried("aggregator + t-1 shares")
            correlation = np.corrcoef(guess, secret)[0, 1]
            assert abs(correlation) < limit, (what, name, correlation)
            assert np.median(np.abs(guess - secret)) > 10 * np.max(np.abs(secret)), (what, name)  # far off, too
            CAMPAIGN.stopped("aggregator + t-1 shares")
        CAMPAIGN.tried("aggregator + t-1 shares")
        assert abs(_best_linear_combination(guesses, secret)) < 2 * limit, what
        CAMPAIGN.stopped("aggregator + t-1 shares")


def test_two_decrypted_sums_over_different_contributor_sets_reveal_an_update(ceremony):
    """Why consent exists: decrypting the sums of {1..5} and {1..4} (t honest shares each) gives site 5's update.
    A re-run re-encrypts the same updates, so an aggregator that could re-run a round with one contributor left
    out would learn that contributor's update. Each contributor signs one contributor set per step and refuses
    another (tests/test_malicious_aggregator.py::test_share_holders_refuse_every_cheating_request)."""
    c = ceremony(5, 3)
    ctx, sigma = c.ctx, c.consortium.sigma
    rng = np.random.default_rng(5)
    updates = [rng.uniform(-1, 1, ctx.degree) for _ in range(5)]

    def decrypted_sum(sites):
        aggregate = sum_encrypted(ctx, (encrypt_vector(ctx, updates[i - 1]) for i in sites))
        partials = [
            partial_decrypt(ctx, c.shares[i], aggregate.c1, (1, 2, 3), length=aggregate.length, sigma=sigma)
            for i in (1, 2, 3)
        ]
        return combine(ctx, aggregate, partials, threshold=3)

    leaked = decrypted_sum(range(1, 6)) - decrypted_sum(range(1, 5))
    np.testing.assert_allclose(leaked, updates[4], atol=2 * c.consortium.sum_error_bound())
