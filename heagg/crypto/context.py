"""The consortium's CKKS context: TenSEAL's public context plus heagg's view of its RNS parameters.

``CkksContext`` is public: it can encrypt, add, move polynomials in and out of NTT form and decode, but it
never holds a secret key (``from_public_bytes`` refuses a private TenSEAL context). Only the key ceremony
creates a secret key, through ``generate_key``, and gets it back as a ``CeremonyKey`` it must drop.
"""

from __future__ import annotations

import hashlib
import struct
import threading
from dataclasses import dataclass, field

import numpy as np
import tenseal as ts
from tenseal import sealapi

from heagg.crypto import seal_format
from heagg.crypto.modarith import limb_moduli
from heagg.errors import KeyFileCorrupted, WrongKeyFile
from heagg.params import Preset

#: SEAL's ciphertexts hold at most 16 polynomials; heagg batches NTTs of noise in groups of that many
_NTT_BATCH = 16


@dataclass(frozen=True)
class CeremonyKey:
    """The whole CKKS secret key, alive only during the ceremony (and in tests that check against it)."""

    limbs: np.ndarray = field(repr=False)  # (limbs, degree) uint64, NTT form, data primes only
    private_context: ts.Context = field(repr=False)

    def wipe(self) -> None:
        """Overwrite the limbs in place (best effort: Python may hold other copies)."""
        self.limbs.fill(0)


class CkksContext:
    """A public CKKS context at heagg's single ciphertext level.

    Not thread-safe: each thread or process should load its own (they are cheap to load from bytes).
    """

    def __init__(self, tenseal_context: ts.Context, *, preset: Preset, scale: float) -> None:
        if tenseal_context.has_secret_key():
            raise WrongKeyFile("a CKKS context holding a secret key was given where a public one is required")
        self._ts = tenseal_context
        self.preset = preset
        self.scale = float(scale)
        self._seal = tenseal_context.seal_context().data
        ctx_data = self._seal.first_context_data()
        self.degree = ctx_data.parms().poly_modulus_degree()
        self.primes: tuple[int, ...] = tuple(m.value() for m in ctx_data.parms().coeff_modulus())
        self.moduli = limb_moduli(self.primes)
        self.parms_id = struct.pack("<4Q", *self._seal.first_parms_id())
        if self.degree != preset.poly_modulus_degree or [p.bit_length() for p in self.primes] != list(preset.data_bits):
            raise KeyFileCorrupted(f"the public context does not match preset {preset.name}")
        self._local = threading.local()

    # construction -------------------------------------------------------------------------------

    @classmethod
    def generate_key(cls, preset: Preset, *, scale: float) -> tuple[CkksContext, CeremonyKey]:
        """Create a fresh key pair; return the public context and the secret key (ceremony only)."""
        private = ts.context(
            ts.SCHEME_TYPE.CKKS,
            poly_modulus_degree=preset.poly_modulus_degree,
            coeff_mod_bit_sizes=preset.coeff_mod_bit_sizes,
        )
        private.global_scale = scale
        public = cls.from_public_bytes(cls._serialize_public(private), preset=preset, scale=scale)
        key = private.secret_key().data.data()  # a Plaintext at the key level: data primes, then special prime
        n, limbs = public.degree, len(public.primes)
        # one call per coefficient: SEAL's API offers nothing in bulk that avoids writing the key to a file
        values = np.fromiter((key.data(i) for i in range(n * limbs)), dtype=np.uint64, count=n * limbs)
        return public, CeremonyKey(values.reshape(limbs, n), private)

    @classmethod
    def from_public_bytes(cls, data: bytes, *, preset: Preset, scale: float) -> CkksContext:
        try:
            context = ts.context_from(data)
        except Exception as exc:  # TenSEAL raises plain ValueError/RuntimeError on garbage
            raise KeyFileCorrupted(f"the public context does not load: {exc}") from exc
        return cls(context, preset=preset, scale=scale)

    @staticmethod
    def _serialize_public(context: ts.Context) -> bytes:
        return context.serialize(
            save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
        )

    def public_bytes(self) -> bytes:
        """TenSEAL's own serialisation of the public context (public key only: no secret, relin or Galois keys)."""
        return self._serialize_public(self._ts)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.parms_id + self.public_bytes()).hexdigest()[:16]

    # SEAL objects, per thread -------------------------------------------------------------------

    def _obj(self, name: str):
        local = self._local
        if not hasattr(local, name):
            if name == "mem":
                value = seal_format.MemFile()
            elif name == "encoder":
                value = sealapi.CKKSEncoder(self._seal)
            elif name == "encryptor":
                value = sealapi.Encryptor(self._seal, self._ts.public_key().data)
            elif name == "evaluator":
                value = sealapi.Evaluator(self._seal)
            else:  # pragma: no cover
                raise AttributeError(name)
            setattr(local, name, value)
        return getattr(local, name)

    # operations ---------------------------------------------------------------------------------

    def encrypt_reals(self, reals: np.ndarray) -> np.ndarray:
        """Encrypt up to N reals (two per complex slot) under the public key: returns (2, limbs, N) uint64."""
        half = self.degree // 2
        padded = np.zeros(self.degree, dtype=np.float64)
        padded[: reals.size] = reals
        plain = sealapi.Plaintext()
        self._obj("encoder").encode((padded[:half] + 1j * padded[half:]).tolist(), self.scale, plain)
        cipher = sealapi.Ciphertext(self._seal)
        self._obj("encryptor").encrypt(plain, cipher)
        blob = self._obj("mem").save(cipher)
        return seal_format.parse_ciphertext(
            blob, primes=self.primes, degree=self.degree, parms_id=self.parms_id, scale=self.scale
        ).data

    def decode_reals(self, plain_ntt: np.ndarray) -> np.ndarray:
        """Decode an NTT-form plaintext (limbs, N) with SEAL's CKKS decoder into N reals."""
        blob = seal_format.build_plaintext(self.parms_id, plain_ntt, scale=self.scale)
        plain = self._obj("mem").load(sealapi.Plaintext(), self._seal, blob)
        slots = np.asarray(self._obj("encoder").decode_complex(plain), dtype=np.complex128)
        return np.concatenate([slots.real, slots.imag])

    def _transform(self, polys: np.ndarray, *, to_ntt: bool) -> np.ndarray:
        """Move polynomials (k, limbs, N) between coefficient and NTT form with SEAL's own transform."""
        out = np.empty_like(polys)
        evaluator, mem = self._obj("evaluator"), self._obj("mem")
        for start in range(0, polys.shape[0], _NTT_BATCH):
            batch = polys[start : start + _NTT_BATCH]
            size = max(batch.shape[0], 2)
            # SEAL refuses a "transparent" ciphertext (all polynomials after the first zero): pad with ones
            data = np.ones((size, *batch.shape[1:]), dtype=np.uint64)
            data[: batch.shape[0]] = batch
            blob = seal_format.build_ciphertext(self.parms_id, data, ntt=not to_ntt, scale=1.0)
            cipher = mem.load(sealapi.Ciphertext(self._seal), self._seal, blob)
            if to_ntt:
                evaluator.transform_to_ntt_inplace(cipher)
            else:
                evaluator.transform_from_ntt_inplace(cipher)
            saved = mem.save(cipher)
            parsed = seal_format.parse_ciphertext_any(saved, primes=self.primes, degree=self.degree, size=size)
            out[start : start + batch.shape[0]] = parsed[: batch.shape[0]]
        return out

    def to_ntt(self, polys: np.ndarray) -> np.ndarray:
        return self._transform(polys, to_ntt=True)

    def from_ntt(self, polys: np.ndarray) -> np.ndarray:
        return self._transform(polys, to_ntt=False)
