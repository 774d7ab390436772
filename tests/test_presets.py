"""The presets meet their targets: 128-bit security, bytes on the wire, fresh noise, error on the average."""

from __future__ import annotations

import math

import numpy as np
import pytest
from tenseal import sealapi

from heagg.ceremony import data_primes
from heagg.consortium import slot_bound
from heagg.crypto import seal_format
from heagg.crypto.context import CkksContext
from heagg.crypto.modarith import add_mod, centered, mul_mod, sub_mod
from heagg.crypto.threshold import combine, partial_decrypt, share_secret
from heagg.crypto.vectors import encrypt_vector, sum_encrypted
from heagg.fedavg import FedAvgSettings, average, site_vector
from heagg.params import MAX_LOG_Q_128, PRESETS, choose_scale, flooding_sigma, get_preset, sum_error_bound

TARGETS = {"compact": (16, 1e-3), "precise": (32, 1e-6)}  # bytes per parameter, max abs error on the average


@pytest.mark.parametrize("name", PRESETS)
def test_preset_is_128_bit_secure_and_within_its_byte_target(name):
    preset = get_preset(name)
    assert sum(preset.coeff_mod_bit_sizes) <= MAX_LOG_Q_128[preset.poly_modulus_degree]
    assert preset.bytes_per_param <= TARGETS[name][0]
    # SEAL agrees that the parameters are valid and at 128 bits
    assert [p.bit_length() for p in data_primes(name)] == list(preset.data_bits)


@pytest.mark.parametrize("name", PRESETS)
def test_fresh_noise_matches_preset(name):
    """The flooding width rests on the measured fresh-encryption noise: it must not exceed the preset's value."""
    preset = get_preset(name)
    ctx, key = CkksContext.generate_key(preset, scale=2.0**40)
    errors = []
    for seed in range(4):
        v = np.random.default_rng(seed).uniform(-1, 1, ctx.degree)
        cipher = ctx.encrypt_reals(v)
        decrypted = add_mod(cipher[0], mul_mod(cipher[1], key.limbs, ctx.moduli), ctx.moduli)
        plain = sealapi.Plaintext()
        half = ctx.degree // 2
        ctx._obj("encoder").encode((v[:half] + 1j * v[half:]).tolist(), ctx.scale, plain)
        _, _, flat = seal_format.parse_plaintext(ctx._obj("mem").save(plain))
        error = ctx.from_ntt(sub_mod(decrypted, flat.reshape(decrypted.shape), ctx.moduli)[None])[0]
        errors.append(centered(error[0], ctx.primes[0]))
    std = float(np.concatenate(errors).std())
    assert 2.0 < std <= preset.fresh_noise_std, (std, preset.fresh_noise_std)


@pytest.mark.parametrize("name", PRESETS)
def test_error_on_the_average_of_100_sites_meets_the_target(name):
    """100 sites, updates clipped to [-1, 1], decrypted by all 100 (the worst case for flooding noise)."""
    preset = get_preset(name)
    n = 100
    settings = FedAvgSettings(clip=1.0, max_site_samples=1000)
    scale = choose_scale(preset, data_primes(name), n_sites=n, slot_bound=slot_bound(n, settings))
    ctx, key = CkksContext.generate_key(preset, scale=scale)
    shares = share_secret(key.limbs, ctx.primes, n=n, t=n)
    rng = np.random.default_rng(5)
    length = ctx.degree - 2  # one chunk with the weight and count slots
    updates = [rng.uniform(-1, 1, length) for _ in range(n)]
    vectors = [site_vector(u, 1000, settings) for u in updates]
    aggregate = sum_encrypted(ctx, (encrypt_vector(ctx, v) for v in vectors))
    sigma = flooding_sigma(preset, n)
    subset = tuple(range(1, n + 1))
    partials = [partial_decrypt(ctx, s, aggregate.c1, subset, length=aggregate.length, sigma=sigma) for s in shares]
    summed = combine(ctx, aggregate, partials, threshold=n, value_bound=2 * slot_bound(n, settings))
    result = average(summed)
    error = np.max(np.abs(result.update - np.mean(updates, axis=0)))
    assert error <= TARGETS[name][1], error
    assert abs(result.participants - n) < 0.5
    # the documented bound on the sum holds too
    assert np.max(np.abs(summed - np.sum(vectors, axis=0))) <= sum_error_bound(
        preset, n_sites=n, threshold=n, scale=scale, slot_bound=slot_bound(n, settings)
    )


def test_flooding_sigma_follows_the_openfhe_rule():
    preset = get_preset("compact")
    e_ct = 7.0 * preset.fresh_noise_std * math.sqrt(5)
    assert flooding_sigma(preset, 5) == pytest.approx(math.sqrt(12 * 2**16) * 2**15 * e_ct)
    # wider for more sites and for a larger budget
    assert flooding_sigma(preset, 50) > flooding_sigma(preset, 5)
    assert flooding_sigma(get_preset("precise"), 5) > flooding_sigma(preset, 5)
