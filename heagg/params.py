"""CKKS parameter presets for additive-only aggregation, and the arithmetic that sizes them.

Every preset is at 128-bit security under the HomomorphicEncryption.org table (max log2 Q: 109 for N=4096,
218 for N=8192, 438 for N=16384, counting the special prime). Aggregation only adds ciphertexts, so there is
no relinearisation, no rotation and no rescaling: ciphertexts sit at one level whose data primes carry the
scale and the headroom, and the special prime only cuts fresh-encryption noise.

Noise flooding (DESIGN.md) fixes everything else. A decrypting site adds noise of standard deviation

    sigma = sqrt(12 * tau) * 2**(s / 2) * |e_ct|        (OpenFHE's rule for CKKS, s = 30)

where tau is the number of ciphertext decryptions the key may ever serve and |e_ct| bounds the aggregate
ciphertext's own error. The slot error of a threshold decryption is then about
sigma * sqrt(t * N / 2) / scale, so the scale must be as large as the headroom allows: heagg picks, per
consortium, the largest power of two that keeps ``scale * sqrt(2) * sum_bound`` plus the flooding noise
below q / 2 (q the product of the data primes), where ``sum_bound`` bounds any slot of the sum of all
sites' vectors (``heagg.fedavg`` clips updates and caps weights so that such a bound exists).

All functions here are pure arithmetic; nothing touches TenSEAL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from heagg.errors import UsageError

#: HomomorphicEncryption.org standard, classical 128-bit security, ternary secret: max log2(Q*P) per N
MAX_LOG_Q_128 = {4096: 109, 8192: 218, 16384: 438}

#: statistical security of noise flooding, in bits (DESIGN.md)
STATISTICAL_SECURITY = 30

#: z-score used for high-probability bounds: P(|N(0,1)| > 7) ~ 2.6e-12 per coefficient or slot
Z_BOUND = 7.0


@dataclass(frozen=True)
class Preset:
    """A named CKKS parameter set for heagg's additive-only workload."""

    name: str
    poly_modulus_degree: int
    data_bits: tuple[int, ...]
    special_bits: int
    #: log2 of the decryption budget tau (ciphertext chunks one key may partially decrypt)
    tau_log2: int
    #: measured standard deviation of a fresh public-key encryption's error, coefficient domain
    #: (checked by tests/test_presets.py::test_fresh_noise_matches_preset)
    fresh_noise_std: float
    summary: str
    #: the consortium size the documented error bound assumes
    max_sites: int = 100

    @property
    def coeff_mod_bit_sizes(self) -> list[int]:
        """TenSEAL's ``coeff_mod_bit_sizes``: data primes first, special prime last."""
        return [*self.data_bits, self.special_bits]

    @property
    def slots(self) -> int:
        """Complex CKKS slots per ciphertext."""
        return self.poly_modulus_degree // 2

    @property
    def reals_per_ciphertext(self) -> int:
        """Two reals per complex slot: the real and the imaginary part."""
        return self.poly_modulus_degree

    @property
    def bits_per_coefficient(self) -> int:
        return max(self.data_bits)

    @property
    def bytes_per_param(self) -> float:
        """Wire bytes per real parameter: two polynomials, packed at the prime width, N reals per ciphertext."""
        return (
            2
            * self.poly_modulus_degree
            * len(self.data_bits)
            * self.bits_per_coefficient
            / 8
            / self.reals_per_ciphertext
        )

    @property
    def tau(self) -> int:
        return 1 << self.tau_log2

    def check(self) -> None:
        """Refuse parameters below 128-bit security or beyond what SEAL accepts."""
        n = self.poly_modulus_degree
        if n not in MAX_LOG_Q_128:
            raise UsageError(f"preset {self.name}: poly_modulus_degree {n} is not one of {sorted(MAX_LOG_Q_128)}")
        total = sum(self.coeff_mod_bit_sizes)
        if total > MAX_LOG_Q_128[n]:
            raise UsageError(f"preset {self.name}: log2 Q = {total} exceeds {MAX_LOG_Q_128[n]} for 128-bit security")
        if any(not 20 <= b <= 60 for b in self.coeff_mod_bit_sizes):
            raise UsageError(f"preset {self.name}: SEAL primes must be 20 to 60 bits")


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="compact",
            poly_modulus_degree=4096,
            data_bits=(60,),
            special_bits=49,
            tau_log2=16,
            fresh_noise_std=2**4.1,  # measured 2**3.9
            summary="15 bytes/parameter; error ~1e-5..1e-4 on the average; smallest and fastest",
        ),
        Preset(
            name="precise",
            poly_modulus_degree=8192,
            data_bits=(60, 60),
            special_bits=60,
            tau_log2=32,
            fresh_noise_std=2**4.6,  # measured 2**4.4
            summary="30 bytes/parameter; error < 1e-9 on the average; a far larger decryption budget",
        ),
    )
}

DEFAULT_PRESET = "compact"


def get_preset(name: str) -> Preset:
    try:
        preset = PRESETS[name]
    except KeyError:
        raise UsageError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}") from None
    preset.check()
    return preset


def ciphertext_noise_bound(preset: Preset, n_sites: int) -> float:
    """High-probability bound on |e_ct|, the error of a sum of ``n_sites`` fresh ciphertexts (coefficient domain)."""
    return Z_BOUND * preset.fresh_noise_std * math.sqrt(max(n_sites, 1))


def flooding_sigma(preset: Preset, n_sites: int) -> float:
    """Standard deviation of each decrypting site's flooding noise (OpenFHE's CKKS rule, s = 30)."""
    return math.sqrt(12 * preset.tau) * 2 ** (STATISTICAL_SECURITY / 2) * ciphertext_noise_bound(preset, n_sites)


def choose_scale(preset: Preset, primes: list[int], *, n_sites: int, slot_bound: float) -> float:
    """The CKKS scale: the largest power of two leaving headroom for ``slot_bound`` and the flooding noise.

    ``slot_bound`` bounds any slot of the decrypted sum. A polynomial encoding slots bounded by B (real and
    imaginary parts) has coefficients bounded by sqrt(2) * B, and the combined flooding noise of up to
    ``n_sites`` decryptors stays below Z_BOUND * sigma * sqrt(n_sites) with overwhelming probability.
    """
    q = math.prod(primes)
    noise = Z_BOUND * flooding_sigma(preset, n_sites) * math.sqrt(n_sites) + ciphertext_noise_bound(preset, n_sites)
    room = q / 2 - noise
    if room <= 0 or slot_bound <= 0:
        raise UsageError(f"preset {preset.name} has no headroom for {n_sites} sites")
    exponent = math.floor(math.log2(room / (math.sqrt(2) * slot_bound)))
    # a scale of at least 2**30 keeps the flooding error meaningful; beyond the total modulus SEAL refuses
    if exponent < 30:
        raise UsageError(
            f"preset {preset.name} cannot hold a sum bounded by {slot_bound:g}: choose a preset with larger primes"
        )
    return float(2**exponent)


def slot_error_std(preset: Preset, *, n_sites: int, threshold: int, scale: float) -> float:
    """Standard deviation of the error on each real of a threshold-decrypted sum (flooding dominates)."""
    sigma = flooding_sigma(preset, n_sites)
    return sigma * math.sqrt(threshold * preset.poly_modulus_degree / 2) / scale


def sum_error_bound(preset: Preset, *, n_sites: int, threshold: int, scale: float, slot_bound: float = 0.0) -> float:
    """High-probability bound on the error of any real in a threshold-decrypted sum.

    Z_BOUND standard deviations of the flooding error, plus the floating-point floor of SEAL's decoder
    (double precision over a log2(N)-deep FFT, relative to ``slot_bound``, the largest value a slot may hold).
    The decrypting set may be larger than ``threshold``; the bound is stated for ``threshold`` decryptors
    and grows with the square root of the set's size.
    """
    flooding = Z_BOUND * slot_error_std(preset, n_sites=n_sites, threshold=threshold, scale=scale)
    floating = 4 * math.log2(preset.poly_modulus_degree) * 2.0**-52 * slot_bound
    return flooding + floating
