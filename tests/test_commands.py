"""The documented commands as a newcomer meets them: every --help reads as plain text and prints
no warning; small things the commands must get right (file modes, a missing archive)."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMMANDS = [["-m", "mtan.hub"], ["-m", "mtan.data.camvid"], ["-m", "mtan.data.cityscapes"], ["-m", "mtan.release"],
            ["-m", "mtan.evaluate"], ["-m", "mtan.calibrate"], ["-m", "mtan.precision"], ["-m", "mtan.convert"],
            ["-m", "mtan.data"], ["train.py"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[-1])
def test_help_is_plain_text_without_warnings(command):
    r = subprocess.run([sys.executable, *command, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONWARNINGS": "default"})
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", r.stderr  # e.g. runpy's "found in sys.modules after import of package" warning
    for markup in ("``", ":func:", ":class:", ":mod:", ":data:", ":meth:"):
        assert markup not in r.stdout, (markup, r.stdout[:500])


def test_saved_weights_are_readable_like_the_other_files(tmp_path):
    from mtan import MTAN, preset_tasks

    MTAN(preset_tasks("cityscapes-7"), width=1 / 16).save_pretrained(tmp_path / "m")
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "m").iterdir()}
    assert modes["model.safetensors"] == modes["config.json"], modes


def test_camvid_download_names_a_missing_archive(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mtan.data.camvid", "download", "--archive", str(tmp_path / "no.zip"),
                        "--out", str(tmp_path / "camvid")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "does not exist" in r.stderr and "delete it" not in r.stderr


def test_the_cpu_only_install_pins_what_requirements_pins_before_the_rest():
    """requirements-cpu.txt: PyTorch's CPU wheels at exactly the versions requirements.txt pins
    (a local +cpu version satisfies ==X.Y.Z), listed before the rest, so nothing swaps them after."""
    import re

    cpu = [line.strip() for line in (REPO / "requirements-cpu.txt").read_text().splitlines()
           if line.strip() and not line.startswith("#")]
    runtime = {m.group(1): m.group(2) for line in (REPO / "requirements.txt").read_text().splitlines()
               if (m := re.match(r"(torch|torchvision)==([\d.]+)", line.strip()))}
    assert set(runtime) == {"torch", "torchvision"}
    assert cpu[0] == "--extra-index-url https://download.pytorch.org/whl/cpu"
    pins = {m.group(1): m.group(2) for line in cpu if (m := re.match(r"(torch|torchvision)==([\d.]+)\+cpu$", line))}
    assert pins == runtime
    assert cpu.index("-r requirements.txt") > max(i for i, line in enumerate(cpu) if line.startswith("torch"))
    readme = (REPO / "README.md").read_text()
    assert "pip install -r requirements-cpu.txt && python app.py" in " ".join(readme.split())


def test_evaluate_names_a_missing_run_folder_first(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mtan.evaluate", "--model", str(tmp_path / "runs" / "mtan")], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "does not exist" in r.stderr and "--data is needed" not in r.stderr


def test_the_package_built_from_pyproject_holds_every_module_and_the_page_script(tmp_path):
    """``pip install .`` (a wheel built from pyproject.toml) carries every module of ``mtan`` and
    the files the modules read beside them (the page's script), so an installed app starts."""
    import shutil
    import zipfile

    src = tmp_path / "src"
    shutil.copytree(REPO / "mtan", src / "mtan", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path / "wheel")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    wheel, = (tmp_path / "wheel").glob("mtan-*.whl")
    packed = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("mtan/")}
    present = {p.relative_to(REPO).as_posix() for p in (REPO / "mtan").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert {p for p in present if p.endswith(".py")} <= packed
    assert "mtan/serve/page.js" in present and present <= packed, sorted(present - packed)
