"""Threshold CKKS on SEAL's RNS/NTT data: share the secret key, partially decrypt, combine.

The secret key s is a polynomial stored as one limb per data prime q_j, in NTT form. Sharing works limb by
limb and coefficient by coefficient over F_{q_j}: a random polynomial of degree t-1 with constant term s,
evaluated at site index i = 1..n. The NTT is a linear bijection, so shares of NTT(s) are NTT of shares of s.

Partial decryption by site i in the decrypting set S:  d_i = lambda_i * c1 * s_i + e_i  (pointwise, NTT form)
Combination:                                         c0 + sum_{i in S} d_i = Delta * m + e_ct + sum e_i

e_i is noise flooding: one integer polynomial per chunk from the CSPRNG, the same integer reduced modulo
every prime, brought to NTT form with SEAL's own transform. Without it d_i / (lambda_i * c1) is the share
s_i, and the combiner sees e_ct, which depends on s (see DESIGN.md). Partial decryption never runs without
it unless a caller asks for ``sigma=0`` explicitly, which only tests of that very attack do.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from heagg.crypto import codec
from heagg.crypto.context import CkksContext
from heagg.crypto.modarith import add_mod, mul_mod, reduce_signed
from heagg.crypto.sampling import RandomBytes, gaussian_integers, uniform_mod
from heagg.crypto.vectors import EncryptedVector, layout_of
from heagg.errors import BadShape, DecryptionFailed, NotEnoughShares


@dataclass(frozen=True)
class KeyShare:
    """Site ``index``'s Shamir share of the secret key: (limbs, N) uint64, NTT form."""

    index: int
    limbs: np.ndarray = field(repr=False)

    def fingerprint(self) -> str:
        """A hash of the share that identifies it without revealing it."""
        return hashlib.sha256(b"heagg-share" + self.index.to_bytes(4, "little") + self.limbs.tobytes()).hexdigest()[:16]


def share_secret(
    secret: np.ndarray, primes: Sequence[int], *, n: int, t: int, rng: RandomBytes | None = None
) -> list[KeyShare]:
    """Split secret limbs (limbs, N) into ``n`` Shamir shares, any ``t`` of which reconstruct it."""
    if not 1 <= t <= n:
        raise ValueError(f"threshold {t} must be between 1 and the number of sites {n}")
    limbs, degree = secret.shape
    if limbs != len(primes):
        raise BadShape(f"secret has {limbs} limbs for {len(primes)} primes")
    moduli = np.asarray(primes, dtype=np.uint64)[:, None]
    # coefficients a_1..a_{t-1} of the sharing polynomial, uniform per limb and per NTT coefficient
    coefficients = [np.stack([uniform_mod(q, degree, rng=rng) for q in primes]) for _ in range(t - 1)]
    shares = []
    for i in range(1, n + 1):
        x = np.asarray([i % q for q in primes], dtype=np.uint64)[:, None]
        acc = np.zeros((limbs, degree), dtype=np.uint64)
        for a in reversed(coefficients):  # Horner: ((a_{t-1} x + a_{t-2}) x + ...) x + s
            acc = add_mod(mul_mod(acc, x, moduli), a, moduli)
        acc = add_mod(mul_mod(acc, x, moduli), secret, moduli)
        shares.append(KeyShare(i, acc))
    return shares


def check_decrypting_set(decrypting_set: Sequence[int], *, threshold: int, n_sites: int) -> tuple[int, ...]:
    """A decrypting set is at least ``threshold`` distinct site indices in 1..n_sites, kept sorted."""
    members = tuple(sorted(set(decrypting_set)))
    if len(members) != len(decrypting_set):
        raise NotEnoughShares(f"decrypting set {list(decrypting_set)} repeats a site")
    if len(members) < threshold:
        raise NotEnoughShares(f"decrypting set has {len(members)} sites, the threshold is {threshold}")
    if members and (members[0] < 1 or members[-1] > n_sites):
        raise NotEnoughShares(f"decrypting set {list(members)} names a site outside 1..{n_sites}")
    return members


def lagrange_coefficients(index: int, decrypting_set: Sequence[int], primes: Sequence[int]) -> np.ndarray:
    """lambda_index over the decrypting set at 0, modulo each prime: shape (limbs, 1)."""
    if index not in decrypting_set:
        raise NotEnoughShares(f"site {index} is not in the decrypting set {list(decrypting_set)}")
    values = []
    for q in primes:
        num, den = 1, 1
        for j in decrypting_set:
            if j != index:
                num = num * j % q
                den = den * (j - index) % q
        values.append(num * pow(den, -1, q) % q)
    return np.asarray(values, dtype=np.uint64)[:, None]


@dataclass(frozen=True)
class PartialDecryption:
    """Site ``index``'s partial decryption for ``decrypting_set``: (chunks, limbs, N) uint64, NTT form."""

    index: int
    decrypting_set: tuple[int, ...]
    length: int
    data: np.ndarray = field(repr=False)

    def to_bytes(self, ctx: CkksContext) -> bytes:
        return codec.encode_batch(layout_of(ctx), codec.KIND_PARTIAL, self.length, self.data[:, None])

    @classmethod
    def from_bytes(
        cls, ctx: CkksContext, blob: bytes | memoryview, *, index: int, decrypting_set: Sequence[int], max_chunks: int
    ) -> PartialDecryption:
        length, data = codec.decode_batch(layout_of(ctx), blob, kind=codec.KIND_PARTIAL, max_chunks=max_chunks)
        return cls(index, tuple(decrypting_set), length, data[:, 0])


def flooding_noise(ctx: CkksContext, chunks: int, sigma: float, *, rng: RandomBytes | None = None) -> np.ndarray:
    """One integer noise polynomial per chunk, reduced modulo every prime, in NTT form: (chunks, limbs, N)."""
    noise = gaussian_integers(sigma, (chunks, ctx.degree), rng=rng)
    return ctx.to_ntt(reduce_signed(noise, ctx.moduli))


def partial_decrypt(
    ctx: CkksContext,
    share: KeyShare,
    c1: np.ndarray,
    decrypting_set: Sequence[int],
    *,
    length: int,
    sigma: float,
    rng: RandomBytes | None = None,
) -> PartialDecryption:
    """d_i = lambda_i * c1 * s_i + e_i for every chunk of ``c1`` (chunks, limbs, N)."""
    members = tuple(sorted(decrypting_set))
    weighted_share = mul_mod(share.limbs, lagrange_coefficients(share.index, members, ctx.primes), ctx.moduli)
    data = mul_mod(c1, weighted_share, ctx.moduli)
    if sigma > 0:
        add_mod(data, flooding_noise(ctx, c1.shape[0], sigma, rng=rng), ctx.moduli, out=data)
    return PartialDecryption(share.index, members, length, data)


def combine(
    ctx: CkksContext,
    aggregate: EncryptedVector,
    partials: Sequence[PartialDecryption],
    *,
    threshold: int,
    value_bound: float | None = None,
) -> np.ndarray:
    """Decrypt ``aggregate`` from the partial decryptions of a decrypting set; return ``length`` float64 values.

    Refuses (NotEnoughShares) fewer than ``threshold`` partials, partials made for another decrypting set or
    repeated sites. With ``value_bound`` it also refuses (DecryptionFailed) a result with any value beyond
    it: a wrong share or a corrupted partial decrypts to values near q / scale, far outside any bound.
    """
    if not partials:
        raise NotEnoughShares("no partial decryptions")
    members = partials[0].decrypting_set
    indices = sorted(p.index for p in partials)
    if len(partials) < threshold:
        raise NotEnoughShares(f"{len(partials)} partial decryptions, the threshold is {threshold}")
    if tuple(indices) != members or any(p.decrypting_set != members for p in partials):
        raise NotEnoughShares(f"partials from sites {indices} do not match the decrypting set {list(members)}")
    for p in partials:
        if p.data.shape != aggregate.c1.shape:
            raise BadShape(f"partial from site {p.index} has shape {p.data.shape}, expected {aggregate.c1.shape}")
    plain = aggregate.c0.copy()
    for p in partials:
        add_mod(plain, p.data, ctx.moduli, out=plain)
    n = ctx.degree
    out = np.empty(aggregate.chunks * n, dtype=np.float64)
    for k in range(aggregate.chunks):
        out[k * n : (k + 1) * n] = ctx.decode_reals(plain[k])
    # the padding after ``length`` decrypts to about zero, so it is checked too: even a one-value vector
    # then has thousands of slots that a wrong share turns into values far beyond the bound
    if value_bound is not None and out.size and not np.max(np.abs(out)) <= value_bound:
        raise DecryptionFailed(
            f"decrypted values reach {np.max(np.abs(out)):.3g}, beyond the bound {value_bound:g}: "
            "a share or partial decryption is wrong"
        )
    return out[: aggregate.length]
