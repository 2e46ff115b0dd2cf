"""Every command README shows works: each one is extracted from README's ```bash blocks and checked by kind.

* ``python -m vwl_lightning ...`` (Hydra): the overrides compose against the real config (a sweep's first
  value per key) and pass the start-up checks, with README's ``runs/<name>/...`` folders present as
  completed stages in a temporary folder; ``--help`` runs for real.
* ``python -m vwl_lightning.predict | export | cam.irn_format``: run for real on a tiny untrained run.
* ``python -m vwl_lightning.<module>`` (the other tools): ``--help`` exits 0 and lists every ``--flag`` README
  uses with it.
* ``make <target>``: the Makefile has the target.
* ``pip``, ``jupyter``, ``wandb sync``: listed in OUTSIDE and checked for their form only (they install
  packages or need Jupyter / a network); a command of any other kind fails the test, so a new README example
  needs a check here.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from fixtures_models import tiny_run
from vwl_lightning.data.synthetic.config import class_names
from vwl_lightning.stages.pipeline import ALONE_INPUT, check_settings, inherit_for_single_stage
from vwl_lightning.utils.config import config_dir

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SRC = REPO / "src"
RUN_FOR_REAL = ("vwl_lightning.predict", "vwl_lightning.export", "vwl_lightning.cam.irn_format")
OUTSIDE = ("pip", "jupyter", "wandb")


def readme_commands() -> list[str]:
    """Shell commands of README's ```bash blocks: continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words:
                    commands.append(shlex.join(words))
    return commands


def strip(words: list[str]) -> list[str]:
    """Drop leading ``VAR=value`` assignments and a ``.venv/bin/`` prefix."""
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        words = words[1:]
    if words and words[0].endswith("/python"):
        words = ["python", *words[1:]]
    return words


def kind(command: str) -> str:
    words = strip(shlex.split(command))
    if words[:3] == ["python", "-m", "vwl_lightning"]:
        return "hydra"
    if words[:2] == ["python", "-m"] and words[2] in RUN_FOR_REAL:
        return "real"
    if words[:2] == ["python", "-m"] and words[2].startswith("vwl_lightning."):
        return "tool"
    if words[0] == "make":
        return "make"
    if words[0] in OUTSIDE:
        return "outside"
    return "unknown"


COMMANDS = readme_commands()


def by_kind(name: str) -> list[str]:
    return [c for c in COMMANDS if kind(c) == name]


def test_readme_has_commands_of_every_kind_and_no_unchecked_one() -> None:
    assert len(COMMANDS) >= 20
    assert not by_kind("unknown"), by_kind("unknown")
    for name in ("hydra", "real", "tool", "make", "outside"):
        assert by_kind(name), name


def test_extraction_joins_continuations_and_drops_comments() -> None:
    assert "python -m vwl_lightning -m hydra/launcher=slurm +experiment=voc_vwl_l" in " ".join(COMMANDS)
    assert not any("#" in c for c in COMMANDS)


def first_values(overrides: list[str]) -> list[str]:
    """A sweep ``key=a,b,c`` → ``key=a`` (commas inside [...] kept); README's ``...`` placeholder dropped."""
    out = []
    for item in overrides:
        if item == "...":
            continue
        key, _, value = item.partition("=")
        if "," in value and not value.startswith("["):
            value = value.split(",")[0]
        out.append(f"{key}={value}" if _ else item)
    return out


STAGE_FOLDERS = ("classifier", "cams", "pseudo", "seeds", "segmenter")


def readme_runs() -> set[str]:
    """The run folders README's commands name (``runs/<run>/<stage>``)."""
    found = re.findall(r"runs/([\w./=-]+?)/(?:" + "|".join(STAGE_FOLDERS) + r")\b", README.read_text())
    return {"synthetic_vwl_l/default", "x", *found}


def fake_runs(root: Path) -> None:
    """README's run folders as completed stages (what a previous `make run` leaves)."""
    for name in readme_runs():
        for stage in STAGE_FOLDERS:
            folder = root / "runs" / name / stage
            folder.mkdir(parents=True, exist_ok=True)
            record = {"stage": stage, "status": "complete"}
            if stage == "pseudo":  # pseudo -> cams -> classifier, as the stages record them
                record["cam_dir"] = str(folder.parent / "cams")
            if stage == "cams":
                record["checkpoint"] = str(folder.parent / "classifier" / "classifier.ckpt")
            (folder / "manifest.json").write_text(json.dumps(record))
    irn = root / "runs" / "x" / "irn" / "train"
    irn.mkdir(parents=True, exist_ok=True)
    (irn / "irn.ckpt").write_bytes(b"")


@pytest.mark.parametrize("command", [c for c in by_kind("hydra") if "--help" not in c])
def test_hydra_command_composes_and_passes_the_start_up_checks(command: str, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    words = strip(shlex.split(command))[3:]
    overrides = first_values([w for w in words if w != "-m"])
    fake_runs(tmp_path)
    monkeypatch.chdir(tmp_path)
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.run_dir = str(tmp_path / "runs" / "fresh")  # a new run: nothing of its own exists yet
    if "hydra/launcher=slurm" in overrides:
        assert cfg.hydra.launcher.nodes == 2 and cfg.hydra.launcher.tasks_per_node == 4
    names = (str(cfg.stage),) if str(cfg.stage) != "pipeline" else tuple(cfg.pipeline)
    if str(cfg.stage) in ALONE_INPUT:  # what `run` does first for a stage run alone
        with open_dict(cfg):
            inherit_for_single_stage(cfg, str(cfg.stage), {o.split("=", 1)[0].lstrip("+~") for o in overrides})
    check_settings(cfg, names)


def run_inprocess(module: str, args: list[str], monkeypatch: pytest.MonkeyPatch,
                  capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``python -m module args`` inside this process (runpy; argparse exits through SystemExit): exit status
    and what it printed (stdout + stderr)."""
    monkeypatch.setattr(sys, "argv", [module, *args])
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = int(exc.code or 0) if not isinstance(exc.code, str) else 1
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def run_module(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)


def test_help_shows_the_experiments_and_three_examples() -> None:
    assert "python -m vwl_lightning --help" in COMMANDS or any("--help" in c for c in by_kind("hydra"))
    result = run_module("vwl_lightning", "--help")
    assert result.returncode == 0, result.stderr
    assert re.search(r"experiment: .*synthetic_vwl_l.*voc_vwl_l", result.stdout)
    examples = re.findall(r"^\s+python -m vwl_lightning\b", result.stdout, flags=re.MULTILINE)
    assert len(examples) >= 3


def tool_words(command: str) -> list[str]:
    """The module and its arguments, up to a bare ``--`` (what follows goes to Hydra)."""
    words = strip(shlex.split(command))[2:]
    return words[:words.index("--")] if "--" in words else words


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
@pytest.mark.parametrize("module", sorted({tool_words(c)[0] for c in by_kind("tool")}))
def test_tool_help_lists_every_flag_readme_uses(module: str, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    commands = [tool_words(c) for c in by_kind("tool") if tool_words(c)[0] == module]
    flags = [i for i, w in enumerate(commands[0]) if w.startswith("--")]
    positionals = commands[0][1:flags[0]] if flags else commands[0][1:]
    subcommand = [w for w in positionals if not ("/" in w or "." in w)]  # e.g. `grid`, not a path
    code, text = run_inprocess(module, [*subcommand, "--help"], monkeypatch, capsys)
    assert code == 0, text
    used = {w.split("=")[0] for words in commands for w in words if w.startswith("--")}
    missing = [flag for flag in used if flag not in text]
    assert not missing, f"{module}: README uses {missing}, its --help does not know them"


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
def test_sbd_root_in_readme_is_the_folder_the_tool_expects(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    (command,) = [c for c in by_kind("tool") if "vwl_lightning.data.sbd" in c]
    words = shlex.split(command)
    assert words[words.index("--sbd-root") + 1].endswith("benchmark_RELEASE/dataset")
    assert "benchmark_RELEASE/dataset" in run_inprocess("vwl_lightning.data.sbd", ["--help"], monkeypatch, capsys)[1]


@pytest.mark.parametrize("target", sorted({strip(shlex.split(c))[1] for c in by_kind("make")}))
def test_make_targets_exist(target: str) -> None:
    assert re.search(rf"^{re.escape(target)}:", (REPO / "Makefile").read_text(), flags=re.MULTILINE), target


def test_outside_commands_name_real_extras_and_paths() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    for command in by_kind("outside"):
        for extra in re.findall(r"\.\[([a-z,]+)\]", command):
            for name in extra.split(","):
                assert re.search(rf"^{name} = \[", pyproject, flags=re.MULTILINE), (command, name)
        for word in shlex.split(command):
            if word.endswith(".ipynb") and "explored" not in word:
                assert (REPO / word).is_file(), word


def readme_paths(make_config, root: Path) -> None:
    """README's run folder (a tiny untrained run with the benchmark's class names), photos and CAM folder."""
    from PIL import Image

    from vwl_lightning.cam.files import save_cam_file

    run = root / "runs" / "synthetic_vwl_l"
    tiny_run(make_config, run, names=class_names(8))
    (root / "photos").mkdir()
    Image.new("RGB", (72, 60), (120, 30, 200)).save(root / "photos" / "one.jpg")
    Image.new("RGB", (64, 80), (10, 200, 30)).save(root / "photos" / "two.png")
    save_cam_file(run / "cams" / "one.npz", [1, 3], [[[0.5] * 8] * 4] * 2, [[[0.5] * 2]] * 2)


def run_readme(commands: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for command in commands:
        words = strip(shlex.split(command))[2:]
        small = ["--device", "cpu", "--no-progress"] if words[0].endswith("predict") else []
        code, text = run_inprocess(words[0], [*words[1:], *small], monkeypatch, capsys)
        assert code == 0, f"{command}\n{text}"


@pytest.mark.slow  # ~30 s on 2 shared cores; tests/inference/test_predict.py covers predict in the default suite
@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
def test_predict_and_irn_commands_run(make_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """README's predict and irn_format commands, run as written in a folder holding README's paths."""
    readme_paths(make_config, tmp_path)
    monkeypatch.chdir(tmp_path)
    commands = [c for c in by_kind("real") if "vwl_lightning.export" not in c]
    assert len(commands) >= 4
    run_readme(commands, monkeypatch, capsys)
    assert (tmp_path / "predictions" / "one_overlay.png").is_file()
    assert (tmp_path / "predictions" / "two_probs.npz").is_file()
    assert (tmp_path / "cams" / "two_cams.png").is_file()
    assert (tmp_path / "cams_from_irn" / "one.npz").is_file()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
def test_export_command_runs(make_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    readme_paths(make_config, tmp_path)
    monkeypatch.chdir(tmp_path)
    run_readme([c for c in by_kind("real") if "vwl_lightning.export" in c], monkeypatch, capsys)
    assert sorted(p.name for p in (tmp_path / "exported").iterdir()) == [
        "classifier.onnx", "classifier.pt", "export.json", "segmenter.onnx", "segmenter.pt"]


@pytest.mark.slow
def test_default_command_runs_end_to_end_with_small_settings(tmp_path: Path) -> None:
    """README's first command, `python -m vwl_lightning`, as a subprocess with tiny data and one epoch."""
    small = ["debug=tiny", "cam.scales=[1.0]", "logger=csv", f"hydra.run.dir={tmp_path / 'run'}",
             f"paths.cache_dir={tmp_path / 'cache'}"]
    result = run_module("vwl_lightning", *small, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"results: {tmp_path / 'run' / 'results.md'}" in result.stdout
    assert "| segmenter | val mIoU" in (tmp_path / "run" / "results.md").read_text()
