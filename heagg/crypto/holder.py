"""A site's share holder: its key share, its ledger and its flooding width, behind one safe call."""

from __future__ import annotations

from collections.abc import Sequence

from heagg.crypto.context import CkksContext
from heagg.crypto.ledger import DecryptionLedger
from heagg.crypto.sampling import RandomBytes
from heagg.crypto.threshold import KeyShare, PartialDecryption, check_decrypting_set, partial_decrypt
from heagg.crypto.vectors import EncryptedVector
from heagg.errors import NotEnoughShares


class ShareHolder:
    """Partially decrypts an aggregate at most once, always with noise flooding of width ``sigma``."""

    def __init__(
        self,
        ctx: CkksContext,
        share: KeyShare,
        *,
        n_sites: int,
        threshold: int,
        sigma: float,
        ledger: DecryptionLedger,
    ) -> None:
        if sigma <= 0:
            raise ValueError("a share holder never decrypts without noise flooding")
        self.ctx = ctx
        self.share = share
        self.n_sites = n_sites
        self.threshold = threshold
        self.sigma = sigma
        self.ledger = ledger

    @property
    def index(self) -> int:
        return self.share.index

    def partial_decrypt(
        self,
        aggregate: EncryptedVector,
        decrypting_set: Sequence[int],
        *,
        label: str,
        rng: RandomBytes | None = None,
    ) -> PartialDecryption:
        members = check_decrypting_set(decrypting_set, threshold=self.threshold, n_sites=self.n_sites)
        if self.index not in members:
            raise NotEnoughShares(f"site {self.index} is not in the decrypting set {list(members)}")
        self.ledger.authorize(aggregate.chunk_digests(), label=label, decrypting_set=members)
        return partial_decrypt(
            self.ctx, self.share, aggregate.c1, members, length=aggregate.length, sigma=self.sigma, rng=rng
        )
