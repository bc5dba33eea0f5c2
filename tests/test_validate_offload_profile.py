"""``simkit validate --offload --profile``: the profile is found and read as ``simkit validate``
finds and reads it, and one named but missing or broken is refused before anything is measured
(no torch needed), instead of a warning and minutes of measurements predicted with datasheet
defaults."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from simkit.calibrate import validate_offload as vo
from simkit.errors import CalibrationError
from simkit.specs.catalog import repo_path

ROOT = Path(__file__).resolve().parents[1]


def test_missing_profile_is_refused(tmp_path):
    with pytest.raises(CalibrationError, match="calibration profile not found") as e:
        vo.read_profile_facts(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(e.value)
    with pytest.raises(CalibrationError, match="not found"):
        vo.run_offload_validation(vo.OffloadConfig(), str(tmp_path / "nope"))  # refused before torch is asked for


def test_none_means_datasheet_defaults():
    assert vo.read_profile_facts(None) is None
    assert vo.read_profile_facts("none") is None


def test_default_profile_from_another_folder(tmp_path, monkeypatch):
    """The default is relative (calibration/profiles/ci-vm-cpu): from a folder without it (an
    installed simkit's user), it is simkit's shipped one, as `simkit validate` finds it."""
    monkeypatch.chdir(tmp_path)
    facts = vo.read_profile_facts(vo.DEFAULT_PROFILE)
    assert facts is not None
    assert Path(facts["_path"]).resolve().parent == repo_path(*Path(vo.DEFAULT_PROFILE).parts).resolve()
    assert facts.get("threads") and vo.profile_dtypes(facts)


def test_broken_profile_names_file_and_key(tmp_path):
    src = repo_path(*Path(vo.DEFAULT_PROFILE).parts)
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    text = (bad / "profile.yaml").read_text()
    (bad / "profile.yaml").write_text(text.replace("device:", "device_:", 1))
    with pytest.raises(CalibrationError) as e:
        vo.read_profile_facts(bad)
    assert "profile.yaml" in str(e.value)
    (bad / "profile.yaml").write_text("{[: not yaml")
    with pytest.raises(CalibrationError, match="profile.yaml"):
        vo.read_profile_facts(bad)


def test_command_line_refuses_at_once(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "simkit.cli", "validate", "--offload", "--profile", str(tmp_path / "nope")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("simkit validate --offload: error: ") and "calibration profile not found" in proc.stderr
    assert "Traceback" not in proc.stderr and "WARNING" not in proc.stderr + proc.stdout
