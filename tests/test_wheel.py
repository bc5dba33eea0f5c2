"""An installed wheel works from any folder: the catalog, models, calibration profiles, example
scenarios and sample traces travel as package data (setup.py copies them to simkit/_data)."""

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("simkit", "hw_specs", "workloads", "calibration", "pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE")


def _clean_env() -> dict[str, str]:
    import os

    drop = ("PYTHONPATH", "SIMKIT_HOME", "SIMKIT_CATALOG_PATH", "SIMKIT_DEBUG")
    return {k: v for k, v in os.environ.items() if k not in drop}


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    pytest.importorskip("setuptools", minversion="77")
    # build from a copy of the sources, so no stale build/ folder of the checkout leaks in
    src = tmp_path / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCES:
        p = ROOT / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=ignore)
        else:
            shutil.copy2(p, src / name)
    env = _clean_env()
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w", str(dist)],
                   check=True, env=env, cwd=tmp_path, timeout=300)
    (wheel,) = dist.glob("simkit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for must in ("simkit/_data/hw_specs/nodes/dgx-h100.yaml", "simkit/_data/workloads/models/llama-2-7b.yaml",
                 "simkit/_data/workloads/scenarios/quickstart.yaml", "simkit/_data/workloads/traces/burstgpt_sample.csv",
                 "simkit/_data/workloads/searches/cheapest-llama7b.yaml", "simkit/_data/workloads/studies/rate-tp-prefix.yaml",
                 "simkit/_data/calibration/profiles/h100-sxm-vidur/profile.yaml", "simkit/_data/LICENSE",
                 "simkit/_data/calibration/LICENSE-vidur-MIT.txt",
                 "simkit/_data/workloads/traces/LICENSE-AzurePublicDataset-CC-BY-4.0.txt"):
        assert must in names, must

    # a fresh venv with only the wheel; its dependencies come from this interpreter's
    # site-packages through a .pth line (offline and fast; that folder's own .pth files, such
    # as an editable simkit, are not run)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "_simkit_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                   check=True, env=env, timeout=300)

    work = tmp_path / "elsewhere"
    work.mkdir()

    def simkit(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(venv / "bin" / "simkit"), *args], capture_output=True, text=True, env=env, cwd=work, timeout=300)

    where = subprocess.run([str(py), "-c", "import simkit; print(simkit.__file__)"], capture_output=True, text=True, env=env, cwd=work)
    assert where.stdout.startswith(purelib), where.stdout + where.stderr

    listed = simkit("catalog", "list")
    assert listed.returncode == 0, listed.stderr
    assert "dgx-h100" in listed.stdout and "llama-2-7b" in listed.stdout and "h100-sxm" in listed.stdout

    for scenario, limit in (("quickstart", 4), ("workloads/scenarios/azure-conv-continuous.yaml", 20)):
        out = work / Path(scenario).stem
        run = simkit("run", scenario, "--set", f"workload.limit={limit}", "--out", str(out))
        assert run.returncode == 0, run.stderr
        summary = json.loads((out / "summary.json").read_text())
        assert summary["requests_completed"] == limit
        # the shipped profile, not defaults, named relative to the package's data folder
        assert "(calibration/profiles/h100-sxm-vidur/profile.yaml)" in summary["calibration"]
        prov = json.loads((out / "provenance.json").read_text())["calibration"]
        assert "/_data/calibration/profiles/h100-sxm-vidur/profile.yaml" in prov["path"]  # the installed copy

    # the shipped searches and studies run by name, their bases and traces from package data
    study = simkit("study", "rate-tp-prefix", "--set", "workload.limit=10", "--out", str(work / "st"))
    assert study.returncode == 0, study.stderr
    assert (work / "st" / "runs.parquet").is_file()
    search = simkit("search", "cheapest-llama7b", "--out", str(work / "se"), "--no-progress")
    assert search.returncode == 0, search.stderr
    assert (work / "se" / "best.yaml").is_file()
    missing = simkit("search", "no-such-search")
    assert missing.returncode == 2 and "shipped searches: " in missing.stderr and "cheapest-llama7b" in missing.stderr

    # a user catalog extends the shipped one
    user = tmp_path / "mine"
    user.mkdir()
    shutil.copy2(ROOT / "workloads/models/llama-2-7b.yaml", user / "m.yaml")
    text = (user / "m.yaml").read_text().replace("name: llama-2-7b", "name: my-llama")
    (user / "m.yaml").write_text(text)
    env["SIMKIT_CATALOG_PATH"] = str(user)
    listed = simkit("catalog", "list", "--kind", "model")
    assert "my-llama" in listed.stdout and "llama-2-7b" in listed.stdout
