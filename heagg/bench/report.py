"""Benchmark results as tables (rich for the terminal, Markdown for bench/README.md) and target checks."""

from __future__ import annotations

from collections.abc import Callable

from rich.table import Table

from heagg.bench.systems import HEAGG, PLAINTEXT, SINGLE_KEY

#: issue 5's targets
TARGET_COMPACT_BYTES = 16.0
TARGET_SUM_VS_BOUND = 3.0
TARGET_ROUND_S = 60.0
TARGET_ROUND_SETTING = (10_000_000, 10)


def _num(value: float | None) -> str:
    if value is None:
        return "—"
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _with_ratio(row: dict, field: str) -> str:
    ratio = row.get("vs_plaintext", {}).get(field)
    text = _num(row[field])
    if row["system"] == PLAINTEXT or ratio is None:
        return text
    return f"{text} (×{_num(ratio)})"


def _system(row: dict) -> str:
    return f"{row['system']} {row['preset']}" if row["preset"] else row["system"]


def _bytes(row: dict) -> str:
    return f"{_with_ratio(row, 'bytes_per_param')} [{_num(row['floor_bytes_per_param'])}]"


def _sum(row: dict) -> str:
    return f"{_num(row['sum_s'])} ({_num(row['sum_vs_bound'])}× bound)"


def _error(row: dict) -> str:
    bound = row.get("error_bound")
    if row["system"] == HEAGG and bound is not None:
        return f"{row['max_abs_error']:.2g} (≤{bound:.2g})"
    return f"{row['max_abs_error']:.2g}"


COLUMNS: list[tuple[str, Callable[[dict], str]]] = [
    ("params", lambda r: f"{r['params']:.0e}".replace("e+0", "e")),
    ("sites", lambda r: str(r["sites"])),
    ("system", _system),
    ("bytes/param [floor]", _bytes),
    ("encrypt+serialise s/site", lambda r: _with_ratio(r, "to_wire_s")),
    ("transfer s/site", lambda r: _with_ratio(r, "transfer_s")),
    ("sum s, all sites", _sum),
    ("decrypt s", lambda r: _with_ratio(r, "decrypt_s")),
    ("round s, this machine", lambda r: _with_ratio(r, "total_s")),
    ("round s, own machines", lambda r: _with_ratio(r, "round_latency_s")),
    ("aggregator MB", lambda r: _with_ratio(r, "aggregator_peak_mb")),
    ("max error of average", _error),
    ("load", lambda r: f"{r['load_average_1m']:.1f}"),
]


def rich_table(result: dict) -> Table:
    table = Table(title="heagg bench (× = ratio to plaintext in the same run)", header_style="bold")
    for header, _ in COLUMNS:
        table.add_column(header, justify="left" if header == "system" else "right")
    for row in result["results"]:
        table.add_row(*(cell(row) for _, cell in COLUMNS))
    return table


def markdown_table(result: dict) -> str:
    lines = [
        "| " + " | ".join(header for header, _ in COLUMNS) + " |",
        "|" + "|".join("---" if header == "system" else "---:" for header, _ in COLUMNS) + "|",
    ]
    for row in result["results"]:
        lines.append("| " + " | ".join(cell(row) for _, cell in COLUMNS) + " |")
    return "\n".join(lines)


def _representative(rows: list[dict], preset: str) -> dict:
    """heagg's row at the largest model and, among those, the most sites (padding and start-up amortised)."""
    picked = [r for r in rows if r["system"] == HEAGG and r["preset"] == preset]
    return max(picked, key=lambda r: (r["params"], r["sites"]))


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def target_lines(result: dict) -> list[str]:
    """One line per target of issue 5: where heagg stands in this run."""
    rows = result["results"]
    lines = []
    single = {(r["params"], r["sites"]): r for r in rows if r["system"] == SINGLE_KEY}
    presets = list(dict.fromkeys(r["preset"] for r in rows if r["system"] == HEAGG))
    for preset in presets:
        r = _representative(rows, preset)
        measured, floor = r["bytes_per_param"], r["floor_bytes_per_param"]
        verdict = f" — target ≤ 16: {_verdict(measured <= TARGET_COMPACT_BYTES)}" if preset == "compact" else ""
        lines.append(f"bytes/param, heagg {preset} at {r['params']:.0e}: {measured:.2f} (floor {floor:.1f}){verdict}")
    if single:
        r = max(single.values(), key=lambda r: r["params"])
        lines.append(f"bytes/param, single-key baseline at {r['params']:.0e}: {r['bytes_per_param']:.1f}")
    for preset in presets:
        r = _representative(rows, preset)
        base = single.get((r["params"], r["sites"]))
        if base is None:
            continue
        ours, theirs = r["to_wire_us_per_param_1core"], base["to_wire_us_per_param_1core"]
        share = r["bytes_per_param"] / base["bytes_per_param"]
        lines.append(
            f"encrypt+serialise on one core, heagg {preset} at {r['params']:.0e}: {ours:.3f} µs/param vs single-key "
            f"{theirs:.3f} ({theirs / ours:.2f}× as fast, {share:.2f}× the bytes) — target: at least as fast with "
            f"≤ 0.5× the bytes: {_verdict(ours <= theirs and share <= 0.5)}"
        )
    for preset in presets:
        r = _representative(rows, preset)
        ratio, per_site = r["sum_vs_bound"], r["sum_per_site_vs_bound"]
        lines.append(
            f"aggregator sum, heagg {preset} at {r['params']:.0e} x {r['sites']}: {ratio:.1f}× the numpy-add bound "
            f"for the round ({per_site:.1f}× per site, median) — target ≤ {TARGET_SUM_VS_BOUND:.0f}×: "
            f"{_verdict(ratio <= TARGET_SUM_VS_BOUND)}"
        )
    for preset in presets:
        r = _representative(rows, preset)
        lines.append(
            f"speed-up on {r['workers']} workers, heagg {preset} at {r['params']:.0e} x {r['sites']}: encryption "
            f"×{r['encrypt_speedup']:.2f}, partial decryption ×{r['partial_decrypt_speedup']:.2f} (1-minute load "
            f"average {r['load_average_1m']:.1f} when it started)"
        )
    for r in rows:
        if r["system"] == HEAGG and (r["params"], r["sites"]) == TARGET_ROUND_SETTING:
            lines.append(
                f"full round 1e7 x 10, heagg {r['preset']}: {r['total_s']:.1f} s on this machine "
                f"(×{r['vs_plaintext']['total_s']:.0f} plaintext), {r['round_latency_s']:.1f} s with sites on their "
                f"own machines — target < {TARGET_ROUND_S:.0f} s: {_verdict(r['total_s'] < TARGET_ROUND_S)}"
            )
    return lines
