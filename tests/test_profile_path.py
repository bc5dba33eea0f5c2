"""Where `calibration: auto` finds profiles (issue 15): ``SIMKIT_PROFILE_PATH``, the per-user
folder (XDG), the shipped profiles, in that order; the newest ``measured_at`` within a folder;
skipped and rejected files named; ``simkit calibrate``'s default ``--out`` where auto looks;
``simkit calibrate list``; the vLLM hint of a CPU plan."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

import simkit.specs.calibration as spec_cal
from simkit.calibrate import cli_calibrate
from simkit.cli import main
from simkit.cost.efficiency import DatasheetEfficiency
from simkit.cost.profile import Profile, resolve_calibration
from simkit.errors import CalibrationError
from simkit.specs.catalog import repo_path
from tests.conftest import CPU_SCENARIO

PROFILES = repo_path("calibration", "profiles")
CPU_PROFILE = PROFILES / "ci-vm-cpu"
CATALOG = "generic-2core-vm"
SCENARIO = CPU_SCENARIO + "calibration: auto\n"


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty per-user data folder (XDG_DATA_HOME) and no SIMKIT_PROFILE_PATH."""
    xdg = tmp_path / "xdg"
    xdg.mkdir()
    monkeypatch.setenv("XDG_DATA_HOME", str(xdg))
    monkeypatch.delenv(spec_cal.PROFILE_PATH_ENV, raising=False)
    return xdg / "simkit" / "profiles"


def profile_copy(dst: Path, name: str | None = None, **device: object) -> Path:
    """A copy of the shipped CPU profile at ``dst`` with its name and ``device`` keys replaced."""
    shutil.copytree(CPU_PROFILE, dst)
    f = dst / "profile.yaml"
    data = yaml.safe_load(f.read_text())
    data["name"] = name or dst.name
    data["device"].update(device)
    f.write_text(yaml.safe_dump(data, sort_keys=False))
    return dst


def chosen(kind: str = "cpu", catalog: str = CATALOG) -> tuple[object, str | None]:
    eff, _, warn = resolve_calibration("auto", kind, catalog)
    return (Path(eff.path).resolve().parent if isinstance(eff, Profile) else eff), warn


# ---------------------------------------------------------------------------------------------
# The search path and its order
# ---------------------------------------------------------------------------------------------
def test_the_search_path_is_env_then_user_then_shipped(tmp_path, user_dir, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    monkeypatch.setenv(spec_cal.PROFILE_PATH_ENV, f"{a}:{b}::{a}")  # an empty entry is ignored, a repeat searched once
    folders = spec_cal.profile_search_path()
    assert [(f.path, f.origin) for f in folders] == [
        (a, spec_cal.PROFILE_PATH_ENV), (b, spec_cal.PROFILE_PATH_ENV), (user_dir, "user"), (PROFILES, "shipped")]


def test_auto_prefers_the_path_then_the_user_folder_then_the_shipped_profile(tmp_path, user_dir, monkeypatch):
    assert chosen() == (CPU_PROFILE.resolve(), None)
    mine = profile_copy(user_dir / "mine")
    assert chosen() == (mine.resolve(), None)
    env = profile_copy(tmp_path / "env" / "team")
    monkeypatch.setenv(spec_cal.PROFILE_PATH_ENV, str(tmp_path / "env"))
    assert chosen() == (env.resolve(), None)
    # a folder of the path that is itself a profile counts as one
    monkeypatch.setenv(spec_cal.PROFILE_PATH_ENV, str(mine))
    assert chosen() == (mine.resolve(), None)
    # GPU devices keep the shipped profiles while no other folder has one of theirs
    assert chosen("gpu", "h100-sxm") == ((PROFILES / "h100-sxm-vidur").resolve(), None)


def test_the_user_folder_follows_xdg_and_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "x"))
    assert spec_cal.user_profiles_dir() == tmp_path / "x" / "simkit" / "profiles"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")  # the XDG spec: relative paths are invalid
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert spec_cal.user_profiles_dir() == tmp_path / "home" / ".local" / "share" / "simkit" / "profiles"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert spec_cal.user_profiles_dir() == tmp_path / "home" / ".local" / "share" / "simkit" / "profiles"


def test_within_a_folder_the_newest_measurement_wins(user_dir):
    old = profile_copy(user_dir / "a-old", measured_at="2026-11-01T10:00:00+0000")
    new = profile_copy(user_dir / "z-new", measured_at="2026-12-01T09:00:00+0000")
    undated = profile_copy(user_dir / "0-undated", measured_at=None)
    assert chosen() == (new.resolve(), None)
    found, skipped = spec_cal.list_profiles()
    assert [p.file.parent for p in found if p.folder == user_dir] == [new, old, undated] and not skipped
    # the same instant: by folder name; a time without a zone is UTC
    profile_copy(user_dir / "b-same", measured_at="2026-12-01T09:00:00")
    assert chosen() == ((user_dir / "b-same").resolve(), None)


def test_a_missing_path_folder_is_one_error_naming_the_variable(tmp_path, user_dir, monkeypatch, capsys):
    monkeypatch.setenv(spec_cal.PROFILE_PATH_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(CalibrationError) as e:
        resolve_calibration("auto", "cpu", CATALOG)
    assert str(e.value).startswith(f"{spec_cal.PROFILE_PATH_ENV}: '{tmp_path / 'nowhere'}' is missing")
    (tmp_path / "f").write_text("x")
    monkeypatch.setenv(spec_cal.PROFILE_PATH_ENV, str(tmp_path / "f"))
    s = tmp_path / "s.yaml"
    s.write_text(SCENARIO)
    assert main(["run", str(s), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and f"'{tmp_path / 'f'}' is a file" in err
    # calibration: none and a named profile do not search
    assert main(["run", str(s), "--out", str(tmp_path / "out"), "--set", "calibration=none"]) == 0


@pytest.mark.parametrize(
    ("text", "problem"),
    [("simkit_profile: 1\ndevice: [1, 2\n", "malformed YAML"),
     ("simkit_profile: 1\ndevice: [1, 2]\n", "device: expected a mapping of device facts"),
     ("- just a list\n", "device: expected a mapping of device facts")],
)  # fmt: skip
def test_a_broken_profile_is_skipped_with_a_warning_naming_it(tmp_path, user_dir, capsys, text, problem):
    bad = user_dir / "broken" / "profile.yaml"
    bad.parent.mkdir(parents=True)
    bad.write_text(text)
    eff, _, warn = resolve_calibration("auto", "cpu", CATALOG)
    assert isinstance(eff, Profile) and eff.name == "ci-vm-cpu"
    assert warn is not None and f"calibration profile {bad} skipped: " in warn and problem in warn
    # a run goes on with the shipped profile and says so once, on stderr and in provenance.json
    s = tmp_path / "s.yaml"
    s.write_text(SCENARIO)
    assert main(["run", str(s), "--out", str(tmp_path / "out")]) == 0
    err = [x for x in capsys.readouterr().err.splitlines() if "skipped" in x]
    assert len(err) == 1 and str(bad) in err[0]
    prov = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert any(str(bad) in w for w in prov["warnings"])


def test_a_profile_passed_over_is_named(tmp_path, user_dir, monkeypatch):
    """A user's profile that auto cannot use (another CPU count than the catalog's, a --tiny one)
    is passed over for a later one, with a warning naming it and why."""
    wrong = profile_copy(user_dir / "four", fingerprint={**yaml.safe_load((CPU_PROFILE / "profile.yaml").read_text())[
        "device"]["fingerprint"], "logical_cpus": 4})
    tiny = profile_copy(user_dir / "tiny", suite="tiny")
    got, warn = chosen()
    assert got == CPU_PROFILE.resolve()
    assert warn is not None and warn.startswith("calibration: auto passed over ")
    assert f"{wrong} differs from catalog {CATALOG} (logical_cpus: profile 4, catalog {CATALOG} 2)" in warn
    assert f"{tiny} was measured by the --tiny smoke-test suite" in warn and "uses ci-vm-cpu" in warn
    # with nothing after them (no shipped profile): the datasheet defaults, loudly
    monkeypatch.setattr(spec_cal, "profiles_dir", lambda: tmp_path / "no-shipped")
    eff, _, warn = resolve_calibration("auto", "cpu", CATALOG)
    assert isinstance(eff, DatasheetEfficiency) and warn is not None and warn.startswith("WARNING: no calibration profile")
    assert str(wrong) in warn and str(tiny) in warn and f"simkit calibrate --device cpu --catalog {CATALOG}`" in warn


def test_the_run_names_the_chosen_profiles_path(tmp_path, user_dir):
    from simkit.scenario import load_scenario
    from simkit.simulate import simulate, write_outputs

    mine = profile_copy(user_dir / "mine")
    s = tmp_path / "s.yaml"
    s.write_text(SCENARIO)
    res = simulate(load_scenario(str(s)))
    assert f"profile mine ({mine / 'profile.yaml'})" in res.summary["calibration"]
    write_outputs(res, str(tmp_path / "out"), None)
    prov = json.loads((tmp_path / "out" / "provenance.json").read_text())
    cal = prov["calibration"]
    assert cal["profile"] == "mine" and cal["path"] == str((mine / "profile.yaml").resolve()) and cal["setting"] == "auto"


def test_a_study_cache_sees_a_new_user_profile(user_dir):
    from simkit.study import store

    store._FINGERPRINTS.clear()
    before = store.inputs_fingerprint()
    profile_copy(user_dir / "mine")
    store._FINGERPRINTS.clear()
    assert store.inputs_fingerprint() != before
    store._FINGERPRINTS.clear()


# ---------------------------------------------------------------------------------------------
# simkit calibrate: the default --out, what it says, and `simkit calibrate list`
# ---------------------------------------------------------------------------------------------
def parse(argv: list[str]) -> object:
    return cli_calibrate.build_parser().parse_args(argv)


def test_calibrates_default_out_is_the_user_folder(user_dir, monkeypatch):
    assert cli_calibrate.check_args(parse(["--device", "cpu"]))[0] == str(user_dir / "local-cpu")
    assert cli_calibrate.check_args(parse(["--device", "cpu", "--catalog", CATALOG]))[0] == str(user_dir / f"{CATALOG}-local")
    assert cli_calibrate.check_args(parse(["--device", "cpu", "--tiny"]))[0] == str(user_dir / "local-cpu-tiny")
    assert cli_calibrate.check_args(parse(["--device", "cpu", "--out", "x/y"]))[0] == "x/y"
    monkeypatch.setattr(spec_cal, "user_profiles_dir", lambda: None)
    with pytest.raises(CalibrationError, match="--out has no default here"):
        cli_calibrate.check_args(parse(["--device", "cpu"]))


def test_calibrate_says_whether_auto_picks_the_new_profile(tmp_path, user_dir, monkeypatch):
    out = profile_copy(user_dir / f"{CATALOG}-local")
    lines = cli_calibrate.next_steps(str(out), "cpu", CATALOG)
    assert lines[0] == f"  check it:  simkit validate --device cpu --profile {out}"
    assert lines[1].startswith("  use it:    calibration: auto   (it picks this profile for cpu generic-2core-vm")
    assert len(lines) == 2
    # a newer profile in the same folder is picked first: named, and the path given instead
    newer = profile_copy(user_dir / "newer", measured_at="2099-01-01T00:00:00+0000")
    lines = cli_calibrate.next_steps(str(out), "cpu", CATALOG)
    assert lines[1] == f"  use it:    calibration: {out.resolve()}   (a scenario key; or `simkit run SCENARIO --set " \
                       f"calibration={out.resolve()}`)"
    assert f"it picks {newer.resolve()} first" in lines[2]
    # written outside the search path
    elsewhere = profile_copy(tmp_path / "elsewhere")
    lines = cli_calibrate.next_steps(str(elsewhere), "cpu", CATALOG)
    assert f"does not search {tmp_path.resolve()}" in lines[2] and "SIMKIT_PROFILE_PATH" in lines[2]
    # no catalog name: the catalog CPUs with this machine's CPU count
    monkeypatch.setattr("simkit.calibrate.bench.local_cpu_fingerprint", lambda _t: {"logical_cpus": 2})
    lines = cli_calibrate.next_steps(str(out), "cpu", None)
    assert "never picks this profile: it names no catalog device" in lines[2]
    assert "catalog CPUs with this machine's 2 hardware threads: generic-2core-vm" in lines[2]
    monkeypatch.setattr("simkit.calibrate.bench.local_cpu_fingerprint", lambda _t: {"logical_cpus": 7})
    assert "no catalog CPU has this machine's 7 hardware threads" in cli_calibrate.next_steps(str(out), "cpu", None)[2]
    lines = cli_calibrate.next_steps(str(out), "cpu", CATALOG, tiny=True)
    assert "never picks a --tiny profile" in lines[2]


def test_calibrate_list_shows_the_order_and_the_choice(tmp_path, user_dir, capsys):
    mine = profile_copy(user_dir / "mine")
    bad = user_dir / "broken" / "profile.yaml"
    bad.parent.mkdir()
    bad.write_text("device: [\n")
    s = tmp_path / "s.yaml"
    s.write_text(SCENARIO)
    assert main(["calibrate", "list", str(s)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == f"  1. {user_dir}  (per-user folder; 1 profile)"
    assert out[2].startswith(f"  2. {PROFILES}  (shipped with simkit; ")
    rows = {x.split()[0]: x for x in out if x.startswith("  ") and not x.startswith("   ") and x.split()[0][0].isalpha()}
    assert "AUTO PICKS IT for cpu generic-2core-vm" in rows["mine"]
    assert "matches catalog generic-2core-vm, but auto picks mine first" in rows["ci-vm-cpu"]
    assert "AUTO PICKS IT for gpu h100-sxm" in rows["h100-sxm-vidur"]
    assert any(x.startswith(f"  warning: calibration profile {bad} skipped: malformed YAML at line 2: ") for x in out)
    assert out[-1].startswith(f"  warning: calibration profile {bad} skipped")
    assert out[-2].startswith(f"scenario s: computes on cpu generic-2core-vm, calibration: auto -> profile mine ({mine}")
    # without a scenario: the list alone; a bad scenario is one error line
    assert main(["calibrate", "list"]) == 0 and "scenario" not in capsys.readouterr().out
    assert main(["calibrate", "list", str(tmp_path / "none.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "none.yaml" in err


# ---------------------------------------------------------------------------------------------
# The search's vLLM hint of a CPU plan
# ---------------------------------------------------------------------------------------------
def test_the_vllm_hint_of_a_cpu_plan_has_no_gpu_flags():
    from simkit.cost.ops import Precision
    from simkit.deployment import plan_memory
    from simkit.scenario import scenario_from_dict
    from simkit.search.hints import GIB, vllm_flags, vllm_hint
    from simkit.specs.catalog import load_model
    from simkit.specs.node import resolve_node

    data = yaml.safe_load(SCENARIO.replace("static", "continuous"))
    data["plan"]["kv_cache"] = {"preemption": "swap"}
    sc = scenario_from_dict(data)
    flags, notes = vllm_flags(sc)
    assert not [f for f in flags if f.startswith(("--gpu-memory-utilization", "--swap-space", "--cpu-offload-gb"))]
    node = resolve_node("ci-vm")
    from simkit.cost.device import ComputeDevice

    model = load_model("llama-2-7b")
    mem = plan_memory(sc, model, ComputeDevice.from_cpu(node.cpu, node.dram, node.sockets, node.dram_capacity),
                      Precision("fp16", "fp16", "fp16", 128), 1, (model.num_layers,))  # fmt: skip
    gib = mem.num_blocks * mem.block_bytes / GIB
    assert gib > 1
    hint = vllm_hint(sc)
    assert hint.splitlines()[2].startswith(f"VLLM_CPU_KVCACHE_SPACE={int(gib)} vllm serve meta-llama/")
    assert "  --gpu-memory-utilization" not in hint
    assert any("vLLM's CPU backend" in n and f"{gib:.2f} GiB" in n for n in notes)
    assert any("swap has no CPU-backend equivalent" in n for n in notes)
    # a node without a GPU computes on its CPU too; a GPU plan keeps its GPU flags and no CPU setting
    gpu = scenario_from_dict({**data, "hardware": "dgx-h100", "plan": {"batching": {"policy": "continuous"}}})
    assert "--gpu-memory-utilization 0.9" in vllm_flags(gpu)[0] and "VLLM_CPU" not in vllm_hint(gpu)


def test_calibrate_without_catalog_says_so_before_measuring(tmp_path, user_dir, monkeypatch, capsys):
    """The note comes before the minutes of measuring, not only after them."""
    import simkit.calibrate.bench as bench
    from simkit.errors import SimkitError

    def stop(**_kw: object) -> None:
        raise SimkitError("stopped before measuring")

    monkeypatch.setattr(bench, "run_suite", stop)
    monkeypatch.setattr(bench, "local_cpu_fingerprint", lambda _t: {"logical_cpus": 2})
    assert cli_calibrate.main(["--device", "cpu", "--quick"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("note: without --catalog, `calibration: auto` will not pick this profile (pass --catalog")
    assert "generic-2core-vm" in err[0] and err[1] == "simkit calibrate: error: stopped before measuring"
    assert cli_calibrate.main(["--device", "cpu", "--tiny"]) == 2  # a smoke test: no note
    assert capsys.readouterr().err.splitlines() == ["simkit calibrate: error: stopped before measuring"]


def test_validate_defaults_to_this_machines_newest_profile(user_dir, monkeypatch):
    """`simkit validate --device cpu` without --profile validated the shipped profile even after
    the user calibrated; it now takes the first profile of this machine's CPU that auto would see."""
    import simkit.calibrate.bench as bench
    from simkit.calibrate.validate import DEFAULT_PROFILE, machine_profile

    shipped_fp = Profile.load(CPU_PROFILE, with_samples=False).fingerprint
    monkeypatch.setattr(bench, "local_cpu_fingerprint", lambda _t: dict(shipped_fp))
    assert Path(machine_profile()).resolve() == CPU_PROFILE.resolve()
    profile_copy(user_dir / "tiny", suite="tiny", measured_at="2099-01-01T00:00:00+0000")  # never a --tiny one
    other = profile_copy(user_dir / "other", fingerprint={**shipped_fp, "cpu_family": "999"}, measured_at="2098-01-01T00:00:00")
    mine = profile_copy(user_dir / "mine", fingerprint={**shipped_fp, "threads": 2})  # another thread count: same CPU
    assert machine_profile() == str(mine)
    monkeypatch.setattr(bench, "local_cpu_fingerprint", lambda _t: {**shipped_fp, "cpu_family": "999"})
    assert machine_profile() == str(other)
    monkeypatch.setattr(bench, "local_cpu_fingerprint", lambda _t: {**shipped_fp, "cpu_family": "1"})
    assert machine_profile() == DEFAULT_PROFILE
