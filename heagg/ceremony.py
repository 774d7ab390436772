"""The key ceremony (``heagg keygen``): one CKKS key, split t-of-n, and every other key the consortium needs.

Output, written to a temporary directory beside ``out`` and renamed into place only when complete (so a
failed ceremony never leaves half a key directory, and an existing directory is never touched):

    out/consortium.json        the manifest (public)
    out/public.tenseal         TenSEAL's serialisation of the public context: public key only
    out/aggregator.key         the aggregator's CurveZMQ key pair (sealed key file)
    out/sites/<site>.share     per site: its Shamir share of the CKKS secret key, its Ed25519 signing key,
                               its CurveZMQ secret key and the site group key (sealed key file, mode 0600)

The CKKS secret key exists only in this process's memory, for the length of the ceremony; it is never
written to disk (SEAL's objects are read out coefficient by coefficient, not through its file API) and the
limbs are overwritten once shared. The group key, which lets sites exchange partial decryptions the
aggregator cannot read, goes only into the site share files.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import zmq
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tenseal import sealapi

from heagg.consortium import (
    AGGREGATOR_KEY_FILE,
    MANIFEST_FILE,
    PUBLIC_CONTEXT_FILE,
    SITES_DIR,
    Consortium,
    SiteEntry,
    check_site_name,
    share_file,
    slot_bound,
)
from heagg.crypto.context import CeremonyKey, CkksContext
from heagg.crypto.keyfile import seal_keyfile
from heagg.crypto.threshold import share_secret
from heagg.errors import UsageError
from heagg.fedavg import FedAvgSettings
from heagg.params import choose_scale, flooding_sigma, get_preset
from heagg.sitekeys import AGGREGATOR_KIND, SITE_SHARE_KIND


@dataclass(frozen=True)
class CeremonyConfig:
    sites: tuple[str, ...]
    threshold: int
    out: Path
    preset: str = "compact"
    features: tuple[str, ...] = ()
    fedavg: FedAvgSettings = field(default_factory=FedAvgSettings)
    #: fewest contributions a share holder accepts; None means max(2, threshold)
    min_sites: int | None = None

    @property
    def effective_min_sites(self) -> int:
        return self.min_sites if self.min_sites is not None else max(2, self.threshold)

    def validate(self) -> None:
        for name in self.sites:
            check_site_name(name)
        if len(set(self.sites)) != len(self.sites):
            raise UsageError("site names must be unique")
        if len(self.sites) < 2:
            raise UsageError("a consortium needs at least 2 sites")
        if not 1 <= self.threshold <= len(self.sites):
            raise UsageError(f"--threshold must be between 1 and the number of sites ({len(self.sites)})")
        if not self.features or len(set(self.features)) != len(self.features):
            raise UsageError("the feature list must be non-empty and without repeated names")
        if not 2 <= self.effective_min_sites <= len(self.sites):
            raise UsageError(f"--min-sites must be between 2 and the number of sites ({len(self.sites)})")
        if not self.fedavg.clip > 0 or self.fedavg.max_site_samples < 1:
            raise UsageError("--clip must be positive and --max-site-samples at least 1")
        if self.out.exists() and (not self.out.is_dir() or any(self.out.iterdir())):
            raise UsageError(f"{self.out} already exists: refusing to overwrite a key directory; choose a new --out")
        get_preset(self.preset)


@dataclass(frozen=True)
class CeremonyResult:
    consortium: Consortium
    out: Path
    #: the whole secret key, returned only when a test asks for it; the CLI never does
    key: CeremonyKey | None = field(default=None, repr=False)


def data_primes(preset_name: str) -> list[int]:
    """The data primes SEAL picks for a preset (deterministic for N and the bit sizes)."""
    preset = get_preset(preset_name)
    moduli = sealapi.CoeffModulus.Create(preset.poly_modulus_degree, preset.coeff_mod_bit_sizes)
    return [m.value() for m in moduli][: len(preset.data_bits)]


def run_ceremony(
    config: CeremonyConfig,
    passphrases: Mapping[str, str | None],
    *,
    keep_key_for_tests: bool = False,
    kdf_n: int | None = None,
) -> CeremonyResult:
    """Run the ceremony. ``passphrases`` maps each site name and "aggregator" to a passphrase or None (insecure)."""
    config.validate()
    missing = [name for name in (*config.sites, "aggregator") if name not in passphrases]
    if missing:
        raise UsageError(f"no passphrase decided for {', '.join(missing)}")
    preset = get_preset(config.preset)
    n, t = len(config.sites), config.threshold
    scale = choose_scale(preset, data_primes(config.preset), n_sites=n, slot_bound=slot_bound(n, config.fedavg))
    ctx, key = CkksContext.generate_key(preset, scale=scale)
    try:
        shares = share_secret(key.limbs, ctx.primes, n=n, t=t)
    finally:
        if not keep_key_for_tests:
            key.wipe()
    public_bytes = ctx.public_bytes()

    signing = {name: Ed25519PrivateKey.generate() for name in config.sites}
    curve = {name: zmq.curve_keypair() for name in (*config.sites, "aggregator")}
    group_key = secrets.token_bytes(32)
    entries = tuple(
        SiteEntry(
            name=name,
            index=share.index,
            curve_public=curve[name][0].decode(),
            signing_public=signing[name]
            .public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            .hex(),
            share_fingerprint=share.fingerprint(),
        )
        for name, share in zip(config.sites, shares, strict=True)
    )
    consortium = Consortium(
        consortium_id="c-" + secrets.token_hex(8),
        created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        preset=config.preset,
        scale_log2=int(scale).bit_length() - 1,
        primes=ctx.primes,
        parms_id=ctx.parms_id.hex(),
        sigma=flooding_sigma(preset, n),
        tau=preset.tau,
        threshold=t,
        sites=entries,
        aggregator_curve_public=curve["aggregator"][0].decode(),
        public_context_sha256=hashlib.sha256(public_bytes).hexdigest(),
        fedavg=config.fedavg,
        features=config.features,
        min_sites=config.effective_min_sites,
    )

    out = config.out
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.keygen-", dir=out.parent))
    try:
        os.chmod(staging, 0o700)
        (staging / SITES_DIR).mkdir(mode=0o700)
        (staging / PUBLIC_CONTEXT_FILE).write_bytes(public_bytes)
        consortium.write(staging / MANIFEST_FILE)
        extra = {"kdf_n": kdf_n} if kdf_n else {}
        common = {"consortium_id": consortium.consortium_id, "manifest_fingerprint": consortium.fingerprint}
        seal_keyfile(
            staging / AGGREGATOR_KEY_FILE,
            kind=AGGREGATOR_KIND,
            public={**common, "role": "aggregator", "curve_public": consortium.aggregator_curve_public},
            secret={"curve_secret": curve["aggregator"][1].decode()},
            passphrase=passphrases["aggregator"],
            **extra,
        )
        for entry, share in zip(entries, shares, strict=True):
            seal_keyfile(
                share_file(staging, entry.name),
                kind=SITE_SHARE_KIND,
                public={
                    **common,
                    "site": entry.name,
                    "index": entry.index,
                    "share_fingerprint": entry.share_fingerprint,
                    "curve_public": entry.curve_public,
                    "signing_public": entry.signing_public,
                },
                secret={
                    "share": share.limbs.astype("<u8").tobytes(),
                    "signing_key": signing[entry.name].private_bytes(
                        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
                    ),
                    "curve_secret": curve[entry.name][1].decode(),
                    "group_key": group_key,
                },
                passphrase=passphrases[entry.name],
                **extra,
            )
        if out.exists():  # an empty directory the user created beforehand
            out.rmdir()
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        for share in shares:
            share.limbs.fill(0)
    return CeremonyResult(consortium, out, key if keep_key_for_tests else None)


def site_passphrase_env(site: str) -> str:
    """The environment variable that carries one site's passphrase at the ceremony."""
    return "HEAGG_PASSPHRASE_" + "".join(c if c.isalnum() else "_" for c in site).upper()


def sites_from_option(value: str | Sequence[str]) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(s.strip() for s in items if s.strip())
