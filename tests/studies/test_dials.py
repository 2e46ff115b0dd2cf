"""The dials study: gains and the extra-seed rule by hand, and end to end on a tiny setting that it resumes after
a kill and that its table equals the per-run results on disk."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY
from vwl_lightning.errors import ConfigError
from vwl_lightning.studies.ablation import MEASURES, MECHANISM, slug
from vwl_lightning.studies.dials import (
    cell_name,
    check_grid,
    main,
    needs_extra_seed,
    summarise_cell,
    write_outputs,
)
from vwl_lightning.utils.io import read_json


def _row(method: str, seed: int, miou: float) -> dict:
    return {"variant": method, "seed": seed, **{m: miou for m in MEASURES}}


def test_gain_standard_error_and_extra_seed_rule_by_hand() -> None:
    rows = [_row("plain CAM", 1, 0.50), _row("plain CAM", 2, 0.54),       # mean 0.52, std 0.02828
            _row("+ hybrid pooling", 1, 0.60), _row("+ hybrid pooling", 2, 0.62),  # gain 0.09 > spread
            _row("+ VWL-L", 1, 0.51), _row("+ VWL-L", 2, 0.55)]              # gain 0.01 <= spread
    cell = summarise_cell(rows)
    hp = cell["+ hybrid pooling"]["gain"]["seed_miou_best"]
    assert hp["mean"] == pytest.approx(0.09)
    assert hp["se"] == pytest.approx(math.sqrt(np.var([0.6, 0.62], ddof=1) / 2 + np.var([0.5, 0.54], ddof=1) / 2))
    assert not hp["within_spread"]
    vwl = cell["+ VWL-L"]["gain"]["seed_miou_best"]
    assert vwl["mean"] == pytest.approx(0.01) and vwl["within_spread"]
    assert cell["plain CAM"]["gain"]["seed_miou_best"] is None
    assert needs_extra_seed(cell) == ["plain CAM", "+ VWL-L"]
    assert needs_extra_seed(summarise_cell(rows[:4])) == []


@pytest.mark.parametrize(("args", "fragment"), [
    (([1.5], [0.8], ["plain CAM"], []), "--sharing 1.5: expected a value in [0, 1]"),
    (([1.0], [0.8, 0.8], ["plain CAM"], []), "--cooccurrence [0.8, 0.8]: expected distinct values"),
    (([1.0], [0.8], ["+ VWL-L"], []), "expected 'plain CAM' among them"),
    (([1.0], [0.8], ["plain CAM"], ["data.source.generator.cooccurrence=0.3"]), "--sharing/--cooccurrence"),
])
def test_bad_grid_is_one_line_config_error(args: tuple, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_grid(*args)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_written_table_equals_the_runs_given(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for s, p in ((1.0, 0.8), (1.0, 0.1), (0.5, 0.8), (0.5, 0.1)):
        for method in ("plain CAM", "VWL-L + hybrid pooling"):
            for seed in (1, 2):
                rows.append({"sharing": s, "cooccurrence": p, **_row(method, seed, float(rng.uniform(0.3, 0.7))),
                             **{m: float(rng.uniform(0.1, 3.0)) for m in MECHANISM}, "stage_seconds": 60.0})
    cells = write_outputs(tmp_path, rows, [1.0, 0.5], [0.8, 0.1], ["plain CAM", "VWL-L + hybrid pooling"], 10.0)
    md = (tmp_path / "dials.md").read_text()
    for s, p in ((1.0, 0.8), (1.0, 0.1), (0.5, 0.8), (0.5, 0.1)):
        mine = {m: [r for r in rows if (r["sharing"], r["cooccurrence"], r["variant"]) == (s, p, m)]
                for m in ("plain CAM", "VWL-L + hybrid pooling")}
        entry = cells[cell_name(s, p)]["methods"]
        for method, runs in mine.items():
            values = [r["pseudo_miou"] for r in runs]
            assert entry[method]["pseudo_miou"]["mean"] == pytest.approx(np.mean(values))
            assert entry[method]["pseudo_miou"]["std"] == pytest.approx(np.std(values, ddof=1))
            cells_md = f"| {s:.2f} | {p:.2f} | {method} | 2 | {100 * np.mean(values):.1f} ± "
            assert cells_md in md
        gain = np.mean([r["seed_miou_best"] for r in mine["VWL-L + hybrid pooling"]]) - np.mean(
            [r["seed_miou_best"] for r in mine["plain CAM"]])
        assert entry["VWL-L + hybrid pooling"]["gain"]["seed_miou_best"]["mean"] == pytest.approx(gain)
    assert read_json(tmp_path / "dials.json")["compute_seconds"] == pytest.approx(60.0 * len(rows))
    assert len((tmp_path / "dials.csv").read_text().splitlines()) == len(rows) + 1
    assert (tmp_path / "dials_gain.png").stat().st_size > 1000


def _tiny_args(out: Path, cache_dir: Path) -> list[str]:
    overrides = [TINY, f"paths.cache_dir={cache_dir}", "cam.scales=[1.0]"]
    return ["--sharing", "1.0", "0.5", "--cooccurrence", "0.8", "--seeds", "1", "--no-extra-seed",
            "--methods", "plain CAM", "+ hybrid pooling", "--out", str(out), "--", *overrides]


@pytest.mark.slow  # 4 tiny pipeline runs, one of them killed: ~90 s of CPU
def test_dials_resume_after_kill_and_table_equals_the_runs(tmp_path: Path, cache_dir: Path, capsys) -> None:
    out = tmp_path / "dials"
    args = _tiny_args(out, cache_dir)
    first = out / cell_name(1.0, 0.8) / slug("plain CAM") / "seed1"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "vwl_lightning.studies.dials", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:  # kill it hard once the first run has finished its classifier and is making CAMs
        deadline = time.monotonic() + 300
        while not (first / "classifier" / "manifest.json").is_file():
            assert proc.poll() is None, "the study exited before its first classifier finished"
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / "dials.json").exists()
    checkpoint = Path(read_json(first / "classifier" / "manifest.json")["checkpoint"])
    stamp = checkpoint.stat().st_mtime_ns

    assert main(args) == 0  # resumes: the finished classifier is not trained again
    assert checkpoint.stat().st_mtime_ns == stamp
    blob = json.loads((out / "dials.json").read_text())
    assert len(blob["runs"]) == 4 and set(blob["cells"]) == {"s1.00_p0.80", "s0.50_p0.80"}
    # the part-sharing cell is its own data set
    roots = {read_json(Path(r["run_dir"]) / "classifier" / "manifest.json")["data_root"] for r in blob["runs"]}
    assert len(roots) == 2
    md = (out / "dials.md").read_text()
    for run in blob["runs"]:  # every per-run number is the one its stage files hold
        run_dir = Path(run["run_dir"])
        seeds = read_json(run_dir / "seeds" / "manifest.json")["metrics"]
        pseudo = read_json(run_dir / "pseudo" / "manifest.json")["metrics"]
        diagnostics = read_json(run_dir / "diagnostics.json")
        assert run["seed_miou_best"] == seeds["best_miou"] and run["pseudo_miou"] == pseudo["miou"]
        assert run["object_completeness"] == diagnostics["object_completeness"]
        assert run["background_spill"] == diagnostics["background_spill"]
        assert run_dir.parent.parent.name == cell_name(run["sharing"], run["cooccurrence"])
        # class-specific body pixels exist only in the part-sharing cell
        assert math.isnan(run["own_body_activation"]) == (run["sharing"] == 1.0)
        assert run["own_body_activation"] == diagnostics["own_body_activation"] or run["sharing"] == 1.0
        cell = blob["cells"][cell_name(run["sharing"], run["cooccurrence"])]["methods"]
        for measure in MEASURES:  # one seed: the cell's mean is the run's value
            assert cell[run["variant"]][measure]["mean"] == pytest.approx(run[measure])
    for name, cell in blob["cells"].items():
        base, hp = cell["methods"]["plain CAM"], cell["methods"]["+ hybrid pooling"]
        gain = hp["gain"]["seed_miou_best"]["mean"]
        assert gain == pytest.approx(hp["seed_miou_best"]["mean"] - base["seed_miou_best"]["mean"])
        row = (f"| {cell['sharing']:.2f} | {cell['cooccurrence']:.2f} | + hybrid pooling | 1 | "
               f"{100 * hp['seed_miou_best']['mean']:.1f} ± 0.0 |")
        assert row in md, name
        assert f"| + hybrid pooling | {100 * gain:.1f} ± 0.0" in md
    assert (out / "dials_gain.png").stat().st_size > 1000
    assert "Gain over plain CAM" in capsys.readouterr().out
