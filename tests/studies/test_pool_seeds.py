"""Pooling an earlier summary (mean ± std over n₁ seeds) with further seeds' runs: checked against NumPy on all
the values at once, the refusals, and README's pooled table remade from the committed results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vwl_lightning.studies.ablation import MEASURES
from vwl_lightning.studies.pool_seeds import main, pool, pool_study

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("earlier", "later"), [((0.3, 0.7), (0.45,)), ((0.2, 0.4, 0.9), (0.1, 0.55)),
                                                 ((0.5,), (0.6,))])
def test_pool_equals_the_statistics_of_all_values(earlier: tuple[float, ...], later: tuple[float, ...]) -> None:
    values = np.array([*earlier, *later])
    std = float(np.std(earlier, ddof=1)) if len(earlier) > 1 else 0.0
    pooled = pool(float(np.mean(earlier)), std, len(earlier), later)
    assert pooled["mean"] == pytest.approx(values.mean(), abs=1e-12)
    assert pooled["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)


def test_pool_by_hand() -> None:
    """Seeds 0.3 and 0.7 (mean 0.5, std √0.08) with 0.45: mean 1.45 / 3; deviations 0.3 − 0.48333 etc.,
    sum of squares 0.0816667, std √(0.0816667 / 2) = 0.2020726."""
    pooled = pool(0.5, np.sqrt(0.08), 2, [0.45])
    assert pooled["mean"] == pytest.approx(1.45 / 3, abs=1e-12)
    assert pooled["std"] == pytest.approx(0.2020726, abs=1e-7)


def summary_of(variants: dict[str, float | None]) -> dict:
    return {"seeds": [1, 2], "variants": {v: {m: {"mean": x, "std": 0.1 if x is not None else 0.0}
                                              for m in MEASURES} for v, x in variants.items()}}


def test_pool_study_refuses_mixed_seed_sets() -> None:
    rows = [{"variant": "a", "seed": 3, **{m: 0.5 for m in MEASURES}}]
    table = pool_study(summary_of({"a": 0.5}), rows, "later.json")
    assert table["a"]["seeds"] == [1, 2, 3] and table["a"]["seed_miou_best"]["mean"] == pytest.approx(0.5)
    assert table["a"]["irn_pseudo_miou"] == {"mean": None, "std": 0.0}  # in neither
    with pytest.raises(SystemExit, match="later.json: variants"):
        pool_study(summary_of({"a": 0.5, "b": 0.4}), rows, "later.json")
    with pytest.raises(SystemExit, match="'seed_miou_best' of 'a' is missing"):
        pool_study(summary_of({"a": None}), rows, "later.json")


def test_readme_pooled_table_is_remade_from_the_committed_results(tmp_path: Path, capsys) -> None:
    results = REPO / "docs" / "results"
    assert main([str(results / "ablation_pretrained_seeds1_2.json"), str(results / "ablation_pretrained_seed3.json"),
                 "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert printed == (tmp_path / "pooled.md").read_text() + "\n"
    readme = (REPO / "README.md").read_text()
    rows = [line for line in printed.splitlines() if line.startswith("| ") and "±" in line]
    assert len(rows) == 6 + 6 + 4  # main table, mechanism, codebook use
    for row in rows:
        assert row in readme, row
    assert "seeds [1, 2, 3]; compute time 193.3 min" in printed
    assert (tmp_path / "ablation_bars.png").stat().st_size > 1000


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="nothere.json: no such file"):
        main([str(tmp_path / "nothere.json"), str(tmp_path / "b.json")])
