"""Shared fixtures: real ceremonies on disk, cached per (sites, threshold, preset) for the session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from heagg.ceremony import CeremonyConfig, run_ceremony
from heagg.consortium import Consortium
from heagg.crypto.context import CeremonyKey, CkksContext
from heagg.crypto.threshold import KeyShare
from heagg.data import WDBC_FEATURES, load_wdbc
from heagg.localrun import LocalConsortium
from heagg.sitekeys import load_public_context, load_site_keys
from heagg.splits import split_sites

#: scrypt work factor for key files written by tests (the default, 2**15, is tested in test_keyfile.py)
TEST_KDF_N = 2**10


@dataclass
class Ceremony:
    consortium: Consortium
    keys_dir: Path
    ctx: CkksContext
    key: CeremonyKey
    shares: dict[int, KeyShare]


def site_names(n: int) -> tuple[str, ...]:
    return tuple(f"site-{i}" for i in range(1, n + 1))


def ceremony_at(out: Path, n: int, t: int, preset: str = "compact", **config) -> Ceremony:
    names = site_names(n)
    cfg = CeremonyConfig(sites=names, threshold=t, out=out, preset=preset, features=WDBC_FEATURES, **config)
    result = run_ceremony(cfg, dict.fromkeys((*names, "aggregator")), keep_key_for_tests=True, kdf_n=TEST_KDF_N)
    consortium = result.consortium
    shares = {i: load_site_keys(out, name, passphrase=None).share for i, name in enumerate(names, start=1)}
    return Ceremony(consortium, out, load_public_context(out, consortium), result.key, shares)


@pytest.fixture(scope="session")
def ceremony(tmp_path_factory):
    """``ceremony(n, t, preset)`` returns a cached real ceremony (files on disk, key kept for checks)."""
    cache: dict[tuple, Ceremony] = {}

    def make(n: int, t: int, preset: str = "compact") -> Ceremony:
        if (n, t, preset) not in cache:
            out = tmp_path_factory.mktemp(f"keys-{n}-{t}-{preset}") / "keys"
            cache[(n, t, preset)] = ceremony_at(out, n, t, preset)
        return cache[(n, t, preset)]

    return make


def make_consortium(tmp_path, n, t, **kwargs) -> LocalConsortium:
    federation = split_sites(load_wdbc(), n, kwargs.pop("split", "iid"), seed=kwargs.pop("seed", 0))
    local = LocalConsortium(tmp_path / "run", federation, threshold=t, kdf_n=TEST_KDF_N, **kwargs)
    local.setup()
    return local


@pytest.fixture
def consortia():
    made = []

    def make(*args, **kwargs):
        local = make_consortium(*args, **kwargs)
        made.append(local)
        return local

    yield make
    for local in made:
        local.stop_all()
