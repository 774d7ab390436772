"""The share holder's ledger: one partial decryption per ciphertext chunk, ever, within the budget."""

from __future__ import annotations

import numpy as np
import pytest

from heagg.crypto.holder import ShareHolder
from heagg.crypto.ledger import DecryptionLedger
from heagg.crypto.vectors import EncryptedVector, encrypt_vector
from heagg.errors import AlreadyDecrypted, BudgetExhausted, KeyFileCorrupted, NotEnoughShares


def holder(c, index, ledger):
    return ShareHolder(c.ctx, c.shares[index], n_sites=5, threshold=3, sigma=c.consortium.sigma, ledger=ledger)


def test_a_second_request_for_the_same_ciphertext_is_refused(ceremony, tmp_path):
    c = ceremony(5, 3)
    agg = encrypt_vector(c.ctx, np.ones(3 * c.ctx.degree))
    h = holder(c, 1, DecryptionLedger(tmp_path / "ledger", budget=100))
    h.partial_decrypt(agg, (1, 2, 3), label="round 1")
    with pytest.raises(AlreadyDecrypted):  # same ciphertext, same set, new label
        h.partial_decrypt(agg, (1, 2, 3), label="round 1 again")
    with pytest.raises(AlreadyDecrypted):  # same ciphertext, another decrypting set
        h.partial_decrypt(agg, (1, 4, 5), label="round 2")
    reordered = EncryptedVector(agg.length, agg.data[::-1].copy())
    with pytest.raises(AlreadyDecrypted):  # the same chunks re-wrapped in another order
        h.partial_decrypt(reordered, (1, 2, 3), label="round 3")
    other = encrypt_vector(c.ctx, np.ones(10))
    one_old_chunk = EncryptedVector(agg.length, np.concatenate([other.data, agg.data[1:]]))
    with pytest.raises(AlreadyDecrypted):  # a single old chunk hidden among fresh ones
        h.partial_decrypt(one_old_chunk, (1, 2, 3), label="round 4")
    with pytest.raises(AlreadyDecrypted):  # a label (round attempt) is decrypted once
        h.partial_decrypt(other, (1, 2, 3), label="round 1")
    doubled = EncryptedVector(2 * c.ctx.degree, np.concatenate([other.data, other.data]))
    with pytest.raises(AlreadyDecrypted):  # the same chunk twice in one request
        h.partial_decrypt(doubled, (1, 2, 3), label="round 5")
    assert h.ledger.used == 3  # refusals consume nothing
    h.partial_decrypt(other, (1, 2, 3), label="round 6")
    assert h.ledger.used == 4


def test_the_ledger_survives_a_restart_and_a_torn_last_record(ceremony, tmp_path):
    c = ceremony(5, 3)
    path = tmp_path / "ledger"
    agg = encrypt_vector(c.ctx, np.ones(5))
    holder(c, 2, DecryptionLedger(path, budget=100)).partial_decrypt(agg, (1, 2, 3), label="r1")
    intact = path.read_bytes()
    path.write_bytes(intact + b"\x40\x00\x00\x00partial")  # a crash in the middle of the next append
    reopened = DecryptionLedger(path, budget=100)
    assert reopened.used == 1
    assert path.read_bytes() == intact  # the torn tail was dropped
    with pytest.raises(AlreadyDecrypted):
        holder(c, 2, reopened).partial_decrypt(agg, (1, 2, 3), label="r2")


def test_a_damaged_ledger_refuses_to_load(ceremony, tmp_path):
    c = ceremony(5, 3)
    path = tmp_path / "ledger"
    holder(c, 2, DecryptionLedger(path, budget=100)).partial_decrypt(
        encrypt_vector(c.ctx, np.ones(5)), (1, 2, 3), label="r1"
    )
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(KeyFileCorrupted):
        DecryptionLedger(path, budget=100)
    path.write_bytes(b"something else")
    with pytest.raises(KeyFileCorrupted):
        DecryptionLedger(path, budget=100)


def test_the_budget_tau_is_enforced(ceremony, tmp_path):
    c = ceremony(5, 3)
    h = holder(c, 3, DecryptionLedger(tmp_path / "ledger", budget=3))
    h.partial_decrypt(encrypt_vector(c.ctx, np.ones(2 * c.ctx.degree)), (1, 2, 3), label="a")
    with pytest.raises(BudgetExhausted):
        h.partial_decrypt(encrypt_vector(c.ctx, np.ones(2 * c.ctx.degree)), (1, 2, 3), label="b")
    h.partial_decrypt(encrypt_vector(c.ctx, np.ones(5)), (1, 2, 3), label="c")  # exactly at the budget
    with pytest.raises(BudgetExhausted):
        h.partial_decrypt(encrypt_vector(c.ctx, np.ones(5)), (1, 2, 3), label="d")


def test_a_holder_refuses_bad_decrypting_sets_and_never_runs_without_flooding(ceremony):
    c = ceremony(5, 3)
    agg = encrypt_vector(c.ctx, np.ones(5))
    h = holder(c, 1, DecryptionLedger(None, budget=100))
    for bad in [(1, 2), (2, 3, 4), (1, 1, 2), (0, 1, 2), (1, 2, 6)]:
        with pytest.raises(NotEnoughShares):
            h.partial_decrypt(agg, bad, label=f"set {bad}")
    assert h.ledger.used == 0
    with pytest.raises(ValueError):
        ShareHolder(c.ctx, c.shares[1], n_sites=5, threshold=3, sigma=0, ledger=DecryptionLedger(None, budget=1))
