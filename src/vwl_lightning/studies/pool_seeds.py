"""Pool an earlier ablation's per-variant summary with a later ablation's runs of further seeds.

    python -m vwl_lightning.studies.pool_seeds SUMMARY.json ABLATION.json [--out DIR]

For when the earlier run folders are gone and only their summary is left. SUMMARY holds, per variant and measure,
the mean and standard deviation (ddof = 1) over its n₁ seeds, in ``ablation.json``'s ``variants`` layout, with the
seeds under ``seeds`` and the compute under ``compute_seconds``. ABLATION is a later study's ``ablation.json``. Its
rows give n₂ more values x_j with mean m₂ and sum of squares SS₂ = Σ (x_j − m₂)². With n = n₁ + n₂,

    M = (n₁ m₁ + n₂ m₂) / n,  SS = (n₁ − 1) s₁² + n₁ (m₁ − M)² + SS₂ + n₂ (m₂ − M)²,  std = √(SS / (n − 1)),

which are the mean and ddof = 1 standard deviation of all n values. The summary's rounding carries over. Prints
the ablation's tables for the pooled seeds and, with ``--out``, writes ``pooled.json``, ``pooled.md`` and
``ablation_bars.png`` there.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vwl_lightning.studies.ablation import (
    CLASSIFIER_MEASURES,
    IRN_MEASURES,
    MEASURES,
    MECHANISM,
    USAGE,
    bar_chart,
    markdown,
)
from vwl_lightning.utils.io import read_json, write_json_atomic, write_text_atomic

POOLED = (*MEASURES, *IRN_MEASURES, *CLASSIFIER_MEASURES, *MECHANISM, *USAGE)


def pool(mean: float, std: float, count: int, values: Sequence[float]) -> dict[str, float]:
    """Mean and ddof = 1 standard deviation of ``count`` values summarised by (mean, std) and ``values`` together."""
    new = np.asarray(values, dtype=np.float64)
    total = count + new.size
    pooled = (count * mean + new.sum()) / total
    squares = (count - 1) * std ** 2 + count * (mean - pooled) ** 2 + float(((new - pooled) ** 2).sum())
    return {"mean": float(pooled), "std": float(np.sqrt(squares / (total - 1))) if total > 1 else 0.0}


def pool_study(summary: dict[str, Any], rows: list[dict[str, Any]], source: str) -> dict[str, dict[str, Any]]:
    """Per variant and measure, ``summary``'s seeds pooled with the rows' (both must have the variant and, where
    either has a value, the measure: a table never mixes seed sets)."""
    earlier = summary["variants"]
    later = list(dict.fromkeys(r["variant"] for r in rows))
    if set(later) != set(earlier):
        raise SystemExit(f"{source}: variants {sorted(later)} differ from the summary's {sorted(earlier)}")
    table: dict[str, dict[str, Any]] = {}
    for variant in earlier:
        mine = [r for r in rows if r["variant"] == variant]
        entry: dict[str, Any] = {"seeds": [*summary["seeds"], *(r["seed"] for r in mine)]}
        for measure in POOLED:
            before = earlier[variant].get(measure) or {"mean": None}
            values = [r[measure] for r in mine if r.get(measure) is not None]
            if before["mean"] is None and not values:
                entry[measure] = {"mean": None, "std": 0.0}
            elif before["mean"] is None or len(values) != len(mine):
                raise SystemExit(f"{source}: '{measure}' of '{variant}' is missing in the summary or in some runs; "
                                 "expected it in both or in neither")
            else:
                entry[measure] = pool(before["mean"], before["std"], len(summary["seeds"]), values)
        table[variant] = entry
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("summary", type=Path, help="the earlier seeds' summary (ablation.json's 'variants' layout)")
    parser.add_argument("ablation", type=Path, help="a later study's ablation.json (its rows: further seeds)")
    parser.add_argument("--out", type=Path, default=None, help="also write pooled.json, pooled.md, the bar chart")
    args = parser.parse_args(argv)
    for path in (args.summary, args.ablation):
        if not path.is_file():
            raise SystemExit(f"{path}: no such file; expected an ablation summary or ablation.json")
    summary, later = read_json(args.summary), read_json(args.ablation)
    table = pool_study(summary, later["runs"], str(args.ablation))
    compute_seconds = float(summary["compute_seconds"]) + float(later["compute_seconds"])
    text = markdown(table, None, compute_seconds)
    if args.out is not None:
        write_json_atomic(args.out / "pooled.json", {"variants": table, "compute_seconds": compute_seconds})
        write_text_atomic(args.out / "pooled.md", text)
        bar_chart(args.out / "ablation_bars.png", table)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
