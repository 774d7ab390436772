"""``heagg keys inspect``: say what a key-related file is and whether it is intact, never what it hides."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

from heagg.consortium import MANIFEST_FILE, Consortium
from heagg.crypto.keyfile import MAGIC, inspect_keyfile
from heagg.errors import KeyFileCorrupted, UsageError


def describe(path: Path, *, check_passphrase: bool = False) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path} does not exist or is not a file")
    with open(path, "rb") as f:
        head = f.read(len(MAGIC))
    if head == MAGIC:
        passphrase = None
        if check_passphrase:
            from heagg.crypto.keyfile import passphrase_from_env_or_prompt

            passphrase = passphrase_from_env_or_prompt(
                "HEAGG_PASSPHRASE", prompt=f"Passphrase for {path}: ", confirm=False
            )
        return inspect_keyfile(path, passphrase=passphrase).lines()
    if path.suffix == ".json":
        return _describe_manifest(path)
    if path.suffix == ".tenseal":
        return _describe_public_context(path)
    raise UsageError(f"{path} is not a heagg key file, consortium.json or public.tenseal")


def _describe_manifest(path: Path) -> list[str]:
    try:
        consortium = Consortium.from_json_dict(json.loads(path.read_text()), source=str(path))
    except json.JSONDecodeError as exc:
        raise KeyFileCorrupted(f"{path} is not valid JSON: {exc}") from exc
    c = consortium
    lines = [
        f"{path}: heagg consortium manifest, consortium {c.consortium_id}, created {c.created}",
        f"  fingerprint:  {c.fingerprint[:16]} (verified: the manifest is as the ceremony wrote it)",
        f"  CKKS:         preset {c.preset}, scale 2^{c.scale_log2}, {len(c.primes)} data prime(s), "
        f"flooding sigma 2^{math.log2(c.sigma):.1f}, decryption budget {c.tau} chunks",
        f"  error bound:  {c.sum_error_bound():.1e} on each value of a decrypted sum (t={c.threshold} decryptors)",
        f"  threshold:    {c.threshold} of {c.n_sites} sites; min-sites {c.min_sites} per sum",
        f"  fedavg:       clip {c.fedavg.clip}, max site samples {c.fedavg.max_site_samples}",
        f"  features:     {len(c.features)}",
        f"  aggregator:   CurveZMQ key {c.aggregator_curve_public[:8]}...",
    ]
    lines += [
        f"  site {s.index}: {s.name}, CurveZMQ {s.curve_public[:8]}..., share {s.share_fingerprint}" for s in c.sites
    ]
    public = path.parent / "public.tenseal"
    if public.is_file():
        ok = hashlib.sha256(public.read_bytes()).hexdigest() == c.public_context_sha256
        lines.append(f"  public.tenseal beside it: {'matches' if ok else 'DOES NOT MATCH'} the manifest")
    return lines


def _describe_public_context(path: Path) -> list[str]:
    import tenseal as ts

    data = path.read_bytes()
    try:
        context = ts.context_from(data)
    except Exception as exc:  # TenSEAL raises plain ValueError/RuntimeError on garbage
        raise KeyFileCorrupted(f"{path} is not a TenSEAL context: {exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    secret = "PRESENT - this file must not be shared!" if context.has_secret_key() else "absent (public)"
    lines = [
        f"{path}: TenSEAL CKKS context, {len(data)} bytes, mode {os.stat(path).st_mode & 0o777:04o}",
        f"  sha256:       {digest}",
        f"  secret key:   {secret}",
        f"  public key:   {'present' if context.has_public_key() else 'absent'}",
    ]
    manifest = path.parent / MANIFEST_FILE
    if manifest.is_file():
        try:
            expected = json.loads(manifest.read_text())["ckks"]["public_context"]["sha256"]
            lines.append(f"  consortium.json beside it: {'matches' if expected == digest else 'DOES NOT MATCH'}")
        except (KeyError, ValueError, TypeError):
            lines.append("  consortium.json beside it: unreadable")
    return lines
