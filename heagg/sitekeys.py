"""Loading a party's keys from a ceremony's output, checked against the consortium manifest."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from heagg.consortium import AGGREGATOR_KEY_FILE, Consortium, SiteEntry, share_file
from heagg.crypto.context import CkksContext
from heagg.crypto.keyfile import KeyFile, open_keyfile
from heagg.crypto.threshold import KeyShare
from heagg.errors import KeyFileCorrupted, UsageError, WrongKeyFile

SITE_SHARE_KIND = "site-share"
AGGREGATOR_KIND = "aggregator-key"


def load_public_context(keys_dir: Path, consortium: Consortium) -> CkksContext:
    """The consortium's public CKKS context, verified against the manifest (hash, parms_id, primes)."""
    ctx = CkksContext.from_public_bytes(
        consortium.read_public_context(keys_dir), preset=consortium.preset_params, scale=consortium.scale
    )
    if ctx.parms_id.hex() != consortium.parms_id or ctx.primes != consortium.primes:
        raise KeyFileCorrupted("public.tenseal does not match consortium.json (parameters differ)")
    return ctx


def _check_belongs(keyfile: KeyFile, path: Path, consortium: Consortium) -> None:
    if keyfile.public.get("manifest_fingerprint") != consortium.fingerprint:
        raise WrongKeyFile(f"{path} belongs to another key ceremony than {consortium.consortium_id}")


@dataclass(frozen=True)
class SiteKeys:
    """Everything a site holds after the ceremony. Secrets stay out of ``repr``."""

    consortium: Consortium
    site: SiteEntry
    share: KeyShare = field(repr=False)
    signing_key: Ed25519PrivateKey = field(repr=False)
    curve_secret: bytes = field(repr=False)
    group_key: bytes = field(repr=False)

    @property
    def curve_public(self) -> bytes:
        return self.site.curve_public.encode()


def load_site_keys(keys_dir: Path, site: str, *, passphrase: str | None) -> SiteKeys:
    keys_dir = Path(keys_dir)
    consortium = Consortium.load(keys_dir)
    entry = consortium.site(site)
    path = share_file(keys_dir, site)
    keyfile = open_keyfile(path, passphrase=passphrase, expect_kind=SITE_SHARE_KIND)
    _check_belongs(keyfile, path, consortium)
    if keyfile.public.get("site") != site or keyfile.public.get("index") != entry.index:
        raise WrongKeyFile(f"{path} is the share file of site {keyfile.public.get('site')!r}, not {site!r}")
    secret = keyfile.secret
    try:
        n, limbs = consortium.preset_params.poly_modulus_degree, len(consortium.primes)
        raw = secret["share"]
        if len(raw) != 8 * n * limbs:
            raise ValueError("share has the wrong size")
        share = KeyShare(entry.index, np.frombuffer(raw, dtype="<u8").astype(np.uint64).reshape(limbs, n))
        signing_key = Ed25519PrivateKey.from_private_bytes(secret["signing_key"])
        curve_secret = secret["curve_secret"].encode()
        group_key = bytes(secret["group_key"])
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise KeyFileCorrupted(f"{path} does not hold a valid site share ({exc})") from exc
    if share.fingerprint() != entry.share_fingerprint:
        raise WrongKeyFile(f"{path}: the share does not match the manifest's fingerprint for {site}")
    if np.any(share.limbs >= np.asarray(consortium.primes, dtype=np.uint64)[:, None]):
        raise KeyFileCorrupted(f"{path}: share coefficients are out of range")
    if len(group_key) != 32:
        raise KeyFileCorrupted(f"{path}: the group key has the wrong size")
    return SiteKeys(consortium, entry, share, signing_key, curve_secret, group_key)


@dataclass(frozen=True)
class AggregatorKeys:
    """What the aggregator holds: the manifest and its CurveZMQ key pair. No share, no group key."""

    consortium: Consortium
    curve_secret: bytes = field(repr=False)

    @property
    def curve_public(self) -> bytes:
        return self.consortium.aggregator_curve_public.encode()


def load_aggregator_keys(keys_dir: Path, *, passphrase: str | None, key_file: Path | None = None) -> AggregatorKeys:
    keys_dir = Path(keys_dir)
    consortium = Consortium.load(keys_dir)
    path = key_file or keys_dir / AGGREGATOR_KEY_FILE
    keyfile = open_keyfile(path, passphrase=passphrase, expect_kind=AGGREGATOR_KIND)
    _check_belongs(keyfile, path, consortium)
    try:
        curve_secret = keyfile.secret["curve_secret"].encode()
    except (KeyError, AttributeError) as exc:
        raise KeyFileCorrupted(f"{path} does not hold an aggregator key ({exc})") from exc
    if set(keyfile.secret) != {"curve_secret"}:
        raise UsageError(f"{path} holds more than the aggregator's CurveZMQ key: refusing to load it as aggregator")
    return AggregatorKeys(consortium, curve_secret)
