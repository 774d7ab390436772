"""The security campaign: attacks on a running consortium, fuzzing, fault injection, resource bounds (SECURITY.md)."""
