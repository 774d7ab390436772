"""Threshold-CKKS core figures: encrypt, bytes, sum, partial decrypt, combine, error — per preset.

    python bench/threshold_core.py [--params 1000000] [--sites 10] [--threshold 3] [--json out.json]

Every figure is measured in one run next to the plaintext baseline (numpy float64 sum of the same float32
updates), so ratios hold on a noisy shared machine. Flooding is on, at the consortium's sigma.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import numpy as np

from heagg.ceremony import data_primes
from heagg.consortium import slot_bound
from heagg.crypto.context import CkksContext
from heagg.crypto.threshold import combine, partial_decrypt, share_secret
from heagg.crypto.vectors import EncryptedVector, RunningSum, encrypt_vector
from heagg.fedavg import FedAvgSettings
from heagg.params import PRESETS, choose_scale, flooding_sigma, get_preset


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def run_preset(name: str, params: int, sites: int, threshold: int) -> dict:
    preset = get_preset(name)
    settings = FedAvgSettings()
    scale = choose_scale(preset, data_primes(name), n_sites=sites, slot_bound=slot_bound(sites, settings))
    ctx, key = CkksContext.generate_key(preset, scale=scale)
    shares = share_secret(key.limbs, ctx.primes, n=sites, t=threshold)
    key.wipe()
    sigma = flooding_sigma(preset, sites)
    rng = np.random.default_rng(0)
    updates = [rng.uniform(-1, 1, params).astype(np.float32) for _ in range(sites)]

    # plaintext baseline, same data, same run
    _, plain_sum_s = timed(lambda: np.sum([u.astype(np.float64) for u in updates], axis=0))
    truth = np.sum([u.astype(np.float64) for u in updates], axis=0)

    encrypt_s, serialise_s, blobs = [], [], []
    for u in updates:
        vec, t_enc = timed(encrypt_vector, ctx, u)
        blob, t_ser = timed(vec.to_bytes, ctx)
        encrypt_s.append(t_enc)
        serialise_s.append(t_ser)
        blobs.append(blob)
        del vec
    max_chunks = math.ceil(params / ctx.degree)

    def aggregate():
        total = RunningSum(ctx)
        for blob in blobs:
            total.add(EncryptedVector.from_bytes(ctx, blob, max_chunks=max_chunks))
        return total.total

    agg, sum_s = timed(aggregate)
    subset = tuple(range(1, threshold + 1))
    partials, partial_s = [], []
    for i in subset:
        p, t_p = timed(partial_decrypt, ctx, shares[i - 1], agg.c1, subset, length=agg.length, sigma=sigma)
        partials.append(p)
        partial_s.append(t_p)
    out, combine_s = timed(combine, ctx, agg, partials, threshold=threshold)
    return {
        "preset": name,
        "params": params,
        "sites": sites,
        "threshold": threshold,
        "N": preset.poly_modulus_degree,
        "scale_log2": int(math.log2(scale)),
        "sigma_log2": round(math.log2(sigma), 2),
        "encrypt_s_per_site": statistics.median(encrypt_s),
        "serialise_s_per_site": statistics.median(serialise_s),
        "bytes_per_param": len(blobs[0]) / params,
        "floor_bytes_per_param": preset.bytes_per_param,
        "sum_s": sum_s,
        "partial_decrypt_s_per_site": statistics.median(partial_s),
        "combine_decode_s": combine_s,
        "max_abs_error_sum": float(np.max(np.abs(out - truth))),
        "max_abs_error_average": float(np.max(np.abs(out - truth))) / sites,
        "plaintext_sum_s": plain_sum_s,
        "sum_ratio_to_plaintext": sum_s / plain_sum_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--threshold", type=int, default=3)
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    rows = []
    for name in args.presets.split(","):
        print(f"running {name} ...", file=sys.stderr)
        rows.append(run_preset(name, args.params, args.sites, args.threshold))
    header = (
        "| preset | encrypt s/site | bytes/param (floor) | sum of sites s (x plaintext) | partial s/site | "
        "combine+decode s | max err (sum) | max err (avg) |"
    )
    print(header)
    print("|" + "---|" * 8)
    for r in rows:
        print(
            f"| {r['preset']} | {r['encrypt_s_per_site']:.2f} | {r['bytes_per_param']:.2f} "
            f"({r['floor_bytes_per_param']:.0f}) | {r['sum_s']:.3f} (x{r['sum_ratio_to_plaintext']:.1f}) | "
            f"{r['partial_decrypt_s_per_site']:.3f} | {r['combine_decode_s']:.3f} | {r['max_abs_error_sum']:.2e} | "
            f"{r['max_abs_error_average']:.2e} |"
        )
    print(
        f"plaintext numpy sum of {args.sites} x {args.params} float32 in the same run: "
        + ", ".join(f"{r['plaintext_sum_s']:.4f}s" for r in rows)
    )
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump({"results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
