"""Every failure heagg reports, in one tree.

Library code raises these; the CLI turns any ``HeaggError`` into one line and an exit code
(``heagg/cli.py``), so a user never sees a traceback for a mistake they can fix.

    HeaggError
    ├── UsageError                 bad input from the user: a missing file, a bad option, a port in use
    │   └── DataError              a data file that does not meet the node's data contract
    ├── KeyFileError               a key file that cannot be used
    │   ├── WrongPassphrase        the AEAD tag does not verify (wrong passphrase, or the file was modified)
    │   ├── KeyFileCorrupted       the file is truncated, garbled or fails its checksum
    │   └── WrongKeyFile           a valid key file of another kind, site or consortium
    ├── CryptoError
    │   ├── InvalidCiphertext      a ciphertext or partial decryption that failed validation
    │   │   ├── BadHeader          magic, version, compression mode or declared size is wrong
    │   │   ├── ParmsMismatch      parms_id, scale or NTT flag is not the consortium's
    │   │   ├── BadShape           polynomial count, degree or limb count is wrong
    │   │   ├── CoefficientOutOfRange  a coefficient is not below its prime
    │   │   ├── Truncated          fewer bytes than declared
    │   │   └── TooLarge           more chunks or bytes than the limit allows
    │   ├── NotEnoughShares        fewer than t partial decryptions, or a bad decrypting set
    │   ├── DecryptionRefused      the share holder's ledger forbids this partial decryption
    │   │   ├── AlreadyDecrypted   this ciphertext (or round) was partially decrypted before
    │   │   └── BudgetExhausted    the key has served its decryption budget tau
    │   └── DecryptionFailed       the combined result is out of range: a wrong share or partial
    ├── ProtocolError              a message that breaks the wire protocol (reason in ``.reason``)
    │   ├── MalformedMessage       not a well-formed envelope or body
    │   ├── UnsupportedVersion     unknown protocol version
    │   ├── UnknownMessageType     unknown message type
    │   ├── OversizedMessage       a frame or a field beyond its limit
    │   ├── WrongConsortium        another consortium's message
    │   ├── WrongRound             a message for a round that is not open
    │   ├── DuplicateMessage       a second submission, partial or ack for the same round
    │   ├── UnknownSender          a sender that is not in the manifest (or not who it claims)
    │   ├── BadSignature           a contribution whose Ed25519 signature does not verify
    │   └── RequestRefused         a share holder refused a decryption request, with its reason
    └── RoundFailed                a round could not complete (quorum, share holders); it is retried
"""

from __future__ import annotations


class HeaggError(Exception):
    """Base of every heagg error. ``str(err)`` is one line meant for the user."""

    #: process exit code used by the CLI
    exit_code = 1
    #: a short stable tag for logs and counters of rejected messages
    reason = "error"


class UsageError(HeaggError):
    exit_code = 2


class DataError(UsageError):
    pass


class KeyFileError(HeaggError):
    pass


class WrongPassphrase(KeyFileError):
    pass


class KeyFileCorrupted(KeyFileError):
    pass


class WrongKeyFile(KeyFileError):
    pass


class CryptoError(HeaggError):
    pass


class InvalidCiphertext(CryptoError):
    reason = "invalid-ciphertext"


class BadHeader(InvalidCiphertext):
    reason = "bad-header"


class ParmsMismatch(InvalidCiphertext):
    reason = "parms-mismatch"


class BadShape(InvalidCiphertext):
    reason = "bad-shape"


class CoefficientOutOfRange(InvalidCiphertext):
    reason = "coefficient-out-of-range"


class Truncated(InvalidCiphertext):
    reason = "truncated"


class TooLarge(InvalidCiphertext):
    reason = "too-large"


class NotEnoughShares(CryptoError):
    pass


class DecryptionRefused(CryptoError):
    pass


class AlreadyDecrypted(DecryptionRefused):
    pass


class BudgetExhausted(DecryptionRefused):
    pass


class DecryptionFailed(CryptoError):
    pass


class ProtocolError(HeaggError):
    """A message that breaks the protocol."""

    reason = "protocol-error"


class MalformedMessage(ProtocolError):
    reason = "malformed"


class UnsupportedVersion(ProtocolError):
    reason = "unsupported-version"


class UnknownMessageType(ProtocolError):
    reason = "unknown-type"


class OversizedMessage(ProtocolError):
    reason = "oversized"


class WrongConsortium(ProtocolError):
    reason = "wrong-consortium"


class WrongRound(ProtocolError):
    reason = "wrong-round"


class DuplicateMessage(ProtocolError):
    reason = "duplicate"


class UnknownSender(ProtocolError):
    reason = "unknown-sender"


class BadSignature(ProtocolError):
    reason = "bad-signature"


class RequestRefused(ProtocolError):
    reason = "refused"


class RoundFailed(HeaggError):
    exit_code = 3
