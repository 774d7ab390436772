"""The consortium manifest (``consortium.json``): the public facts every party checks against.

Written once by the key ceremony and never changed: the CKKS parameters and scale, the threshold, every
site's name, index and public keys, the aggregator's pinned CurveZMQ key, the FedAvg constants and the
declared feature list. Its ``fingerprint`` (SHA-256 of the canonical JSON without that field) is sealed
into every key file, so a key file only opens against the manifest of its own ceremony.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from heagg.errors import KeyFileCorrupted, UsageError, WrongKeyFile
from heagg.fedavg import FedAvgSettings
from heagg.params import Preset, get_preset, sum_error_bound

MANIFEST_FORMAT = "heagg-consortium/1"
MANIFEST_FILE = "consortium.json"
PUBLIC_CONTEXT_FILE = "public.tenseal"
AGGREGATOR_KEY_FILE = "aggregator.key"
SITES_DIR = "sites"
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_site_name(name: str) -> str:
    if not SITE_NAME.match(name):
        raise UsageError(
            f"site name {name!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit"
        )
    return name


def share_file(keys_dir: Path, site: str) -> Path:
    return keys_dir / SITES_DIR / f"{site}.share"


@dataclass(frozen=True)
class SiteEntry:
    name: str
    index: int
    curve_public: str
    signing_public: str  # hex of the raw Ed25519 public key
    share_fingerprint: str


@dataclass(frozen=True)
class Consortium:
    consortium_id: str
    created: str
    preset: str
    scale_log2: int
    primes: tuple[int, ...]
    parms_id: str
    sigma: float
    tau: int
    threshold: int
    sites: tuple[SiteEntry, ...]
    aggregator_curve_public: str
    public_context_sha256: str
    fedavg: FedAvgSettings
    features: tuple[str, ...]
    #: fewest contributions a share holder accepts in one aggregate
    min_sites: int = 2

    # derived ------------------------------------------------------------------------------------

    @property
    def n_sites(self) -> int:
        return len(self.sites)

    @property
    def scale(self) -> float:
        return float(2**self.scale_log2)

    @property
    def preset_params(self) -> Preset:
        return get_preset(self.preset)

    @property
    def slot_bound(self) -> float:
        """Bound on any slot of the sum of all sites' vectors (``heagg.fedavg``): the scale leaves room for it."""
        return slot_bound(self.n_sites, self.fedavg)

    def sum_error_bound(self, decryptors: int | None = None) -> float:
        return sum_error_bound(
            self.preset_params,
            n_sites=self.n_sites,
            threshold=decryptors or self.threshold,
            scale=self.scale,
            slot_bound=self.slot_bound,
        )

    def site(self, name: str) -> SiteEntry:
        for entry in self.sites:
            if entry.name == name:
                return entry
        raise UsageError(f"site {name!r} is not in consortium {self.consortium_id} (sites: {self.site_names()})")

    def site_by_index(self, index: int) -> SiteEntry:
        for entry in self.sites:
            if entry.index == index:
                return entry
        raise KeyError(index)

    def site_names(self) -> str:
        return ", ".join(s.name for s in self.sites)

    # serialisation ------------------------------------------------------------------------------

    def to_json_dict(self) -> dict:
        body = {
            "format": MANIFEST_FORMAT,
            "consortium_id": self.consortium_id,
            "created": self.created,
            "ckks": {
                "preset": self.preset,
                "scale_log2": self.scale_log2,
                "primes": [str(p) for p in self.primes],
                "parms_id": self.parms_id,
                "flooding_sigma": self.sigma,
                "decryption_budget_chunks": self.tau,
                "public_context": {"file": PUBLIC_CONTEXT_FILE, "sha256": self.public_context_sha256},
            },
            "threshold": self.threshold,
            "min_sites": self.min_sites,
            "sites": [asdict(s) for s in self.sites],
            "aggregator": {"curve_public": self.aggregator_curve_public, "key_file": AGGREGATOR_KEY_FILE},
            "fedavg": {"clip": self.fedavg.clip, "max_site_samples": self.fedavg.max_site_samples},
            "features": list(self.features),
        }
        return {**body, "fingerprint": _fingerprint(body)}

    @property
    def fingerprint(self) -> str:
        return self.to_json_dict()["fingerprint"]

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json_dict(), indent=2) + "\n")

    @classmethod
    def from_json_dict(cls, data: dict, *, source: str = "manifest") -> Consortium:
        try:
            if data.get("format") != MANIFEST_FORMAT:
                raise WrongKeyFile(f"{source} is not a heagg consortium manifest (format {data.get('format')!r})")
            body = {k: v for k, v in data.items() if k != "fingerprint"}
            if data.get("fingerprint") != _fingerprint(body):
                raise KeyFileCorrupted(f"{source} was modified after the ceremony (fingerprint mismatch)")
            ckks = data["ckks"]
            consortium = cls(
                consortium_id=str(data["consortium_id"]),
                created=str(data["created"]),
                preset=str(ckks["preset"]),
                scale_log2=int(ckks["scale_log2"]),
                primes=tuple(int(p) for p in ckks["primes"]),
                parms_id=str(ckks["parms_id"]),
                sigma=float(ckks["flooding_sigma"]),
                tau=int(ckks["decryption_budget_chunks"]),
                threshold=int(data["threshold"]),
                sites=tuple(SiteEntry(**s) for s in data["sites"]),
                aggregator_curve_public=str(data["aggregator"]["curve_public"]),
                public_context_sha256=str(ckks["public_context"]["sha256"]),
                fedavg=FedAvgSettings(
                    clip=float(data["fedavg"]["clip"]), max_site_samples=int(data["fedavg"]["max_site_samples"])
                ),
                features=tuple(str(f) for f in data["features"]),
                min_sites=int(data["min_sites"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise KeyFileCorrupted(f"{source} is missing or has a malformed field: {exc}") from exc
        consortium._check(source)
        return consortium

    def _check(self, source: str) -> None:
        get_preset(self.preset)
        indices = sorted(s.index for s in self.sites)
        names = {s.name for s in self.sites}
        if indices != list(range(1, len(self.sites) + 1)) or len(names) != len(self.sites):
            raise KeyFileCorrupted(f"{source}: site indices must be 1..n and names unique")
        if not 1 <= self.threshold <= len(self.sites):
            raise KeyFileCorrupted(f"{source}: threshold {self.threshold} is not within 1..{len(self.sites)}")
        if not 2 <= self.min_sites <= len(self.sites):
            raise KeyFileCorrupted(f"{source}: min_sites {self.min_sites} is not within 2..{len(self.sites)}")
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            raise KeyFileCorrupted(f"{source}: flooding sigma must be positive")

    @classmethod
    def load(cls, keys_dir: Path) -> Consortium:
        """Load ``keys_dir/consortium.json``; every error is one line that says what to do."""
        path = Path(keys_dir) / MANIFEST_FILE
        if not Path(keys_dir).is_dir():
            raise UsageError(f"key directory {keys_dir} does not exist: pass the directory `heagg keygen --out` wrote")
        if not path.is_file():
            raise UsageError(f"{path} is missing: --keys must be a directory written by `heagg keygen`")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise KeyFileCorrupted(f"{path} is not valid JSON ({exc}): restore it from the ceremony output") from exc
        if not isinstance(data, dict):
            raise KeyFileCorrupted(f"{path} is not a heagg consortium manifest")
        return cls.from_json_dict(data, source=str(path))

    def read_public_context(self, keys_dir: Path) -> bytes:
        """The public context's bytes, checked against the manifest's hash."""
        path = Path(keys_dir) / PUBLIC_CONTEXT_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise UsageError(f"{path} is missing: copy it from the ceremony output") from None
        if hashlib.sha256(data).hexdigest() != self.public_context_sha256:
            raise KeyFileCorrupted(
                f"{path} does not match consortium.json (sha256 mismatch): copy both from the ceremony"
            )
        return data


def slot_bound(n_sites: int, fedavg: FedAvgSettings) -> float:
    """Any slot of a site vector is at most max(clip, 1) in absolute value (weights are at most 1)."""
    return n_sites * max(fedavg.clip, 1.0)


def _fingerprint(body: dict) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()
