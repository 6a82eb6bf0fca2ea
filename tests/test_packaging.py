"""Packaging: the four top-level folders install as parazoo.* and nothing else; every code folder
is a package (so setup.py's discovery ships it); the wheel imports from another directory."""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("arch", "ops", "training", "recipes")


def test_every_code_folder_is_a_package():
    for top in FOLDERS:
        for d, dirs, files in os.walk(ROOT / top):
            dirs[:] = [x for x in dirs if not x.startswith((".", "__"))]
            if any(f.endswith(".py") for f in files):
                assert "__init__.py" in files, f"{d} has Python files but no __init__.py: it would not be installed"


def test_cli_lists_commands():
    from parazoo.recipes.cli import main

    assert main(["--help"]) == 0
    assert main(["no-such-command"]) == 2


@pytest.mark.slow
def test_wheel_contents_and_import_from_elsewhere(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp_path)],
                   check=True, capture_output=True)
    whl = next(tmp_path.glob("parazoo-*.whl"))
    names = zipfile.ZipFile(whl).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"parazoo"}, f"wheel installs top-level names other than parazoo: {tops}"
    for top in FOLDERS:
        assert f"parazoo/{top}/__init__.py" in names
    assert any(n.endswith(".yaml") for n in names), "recipes' YAML package data missing from the wheel"
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(whl)],
                   check=True, capture_output=True)
    code = ("import parazoo.arch as a; from parazoo.arch import LanguageModel, ModelConfig, MIXERS; "
            "print(a.__file__); assert 'attention' in MIXERS")
    env = dict(os.environ, PYTHONPATH=str(target))
    r = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert str(target) in r.stdout, f"imported from {r.stdout.strip()} instead of the installed wheel"
