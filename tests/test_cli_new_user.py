"""What a new user met using calibration and the run's output from an installed wheel (branch
audit15, 2026-12-01): a damaged profile's numbers, where a new profile can be used, a profile of
another machine, the start-up probe's cost, and runs that leave the fast path."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from simkit.calibrate import probe
from simkit.calibrate.cli_calibrate import next_steps
from simkit.cli import main, print_summary, slow_path_note
from simkit.cost.profile import Profile
from simkit.errors import CalibrationError
from simkit.specs.calibration import compare_fingerprints, profiles_dir
from simkit.specs.catalog import repo_path
from tests.conftest import CPU_SCENARIO

CPU_PROFILE = repo_path("calibration", "profiles", "ci-vm-cpu")
SCENARIO = CPU_SCENARIO


def edited_profile(tmp_path: Path, edit: dict[str, object], name: str = "p") -> Path:
    """A copy of the shipped CPU profile with ``edit`` (dotted device keys) applied."""
    dst = tmp_path / name
    shutil.copytree(CPU_PROFILE, dst)
    f = dst / "profile.yaml"
    data = yaml.safe_load(f.read_text())
    for dotted, value in edit.items():
        d = data["device"]
        *head, last = dotted.split(".")
        for k in head:
            d = d[k]
        d[last] = value
    f.write_text(yaml.safe_dump(data, sort_keys=False))
    return dst


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("mem_bandwidth", "fast"),
        ("mem_bandwidth", -3),
        ("peak_flops.bf16", -3),
        ("peak_flops.fp32", "fast"),
        ("sm_count", "fast"),
        ("sm_count", -3),
        ("threads", 1.5),
        ("logical_cpus", 0),
        ("llc_bytes", "big"),
        ("dram_bandwidth", float("inf")),
        ("clock", "fast"),
        ("peak_flops", [1, 2]),
    ],
)
def test_a_damaged_number_in_a_profile_is_one_error_naming_file_and_key(tmp_path, capsys, key, value):
    """Each of these gave a traceback (a word) or a silently wrong roofline (a negative rate)."""
    p = edited_profile(tmp_path, {key: value})
    with pytest.raises(CalibrationError) as e:
        Profile.load(p, with_samples=False)
    assert f"device.{key}" in str(e.value) and "profile.yaml" in str(e.value)
    s = tmp_path / "s.yaml"
    s.write_text(SCENARIO + f"calibration: {p}\n")
    assert main(["run", str(s), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(p / "profile.yaml") in err and f"device.{key}:" in err


def test_the_shipped_profiles_pass_the_number_check():
    for f in sorted(repo_path("calibration", "profiles").glob("*/profile.yaml")):
        assert Profile.load(f.parent, with_samples=False).name


def test_a_loud_warning_is_not_prefixed_twice(capsys):
    from simkit import cli

    cli._SHOWN.clear()
    cli.warn_line("WARNING: loud")
    cli.warn_line("quiet")
    assert capsys.readouterr().err.splitlines() == ["WARNING: loud", "warning: quiet"]


def test_calibrate_says_how_to_use_the_new_profile(tmp_path, monkeypatch):
    """A profile written outside the folders `calibration: auto` searches (or without --catalog)
    is used by naming its path, and the command says so and why."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    out = str(tmp_path / "mine")
    lines = next_steps(out, "cpu", None)
    assert lines[0] == f"  check it:  simkit validate --device cpu --profile {out}"
    assert f"calibration: {Path(out).resolve()}" in lines[1]
    assert "never picks this profile" in lines[2] and "--catalog" in lines[2]
    lines = next_steps(out, "cpu", "generic-2core-vm")
    assert len(lines) == 3 and f"does not search {tmp_path.resolve()}" in lines[2]
    assert str(tmp_path / "xdg" / "simkit" / "profiles") in lines[2] and str(profiles_dir().resolve()) in lines[2]


def test_a_new_users_profile_is_found_from_any_folder(tmp_path, monkeypatch, capsys):
    """From a wheel, `simkit calibrate --device cpu --catalog NAME` wrote its profile under the
    working folder, where `calibration: auto` never looked: a run used the shipped profile of
    another machine. Its default --out is now the per-user folder, which auto searches first,
    from any working folder; the run names the profile it used."""
    from simkit.calibrate.cli_calibrate import build_parser, check_args

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    work = tmp_path / "project"
    work.mkdir()
    monkeypatch.chdir(work)
    out, _ = check_args(build_parser().parse_args(["--device", "cpu", "--quick", "--catalog", "generic-2core-vm"]))
    assert Path(out) == tmp_path / "xdg" / "simkit" / "profiles" / "generic-2core-vm-local"
    mine = edited_profile(Path(out).parent, {"measured_at": "2026-12-01T09:00:00+0000"}, name=Path(out).name)
    assert next_steps(out, "cpu", "generic-2core-vm")[1].startswith("  use it:    calibration: auto   (it picks this")
    (work / "s.yaml").write_text(SCENARIO + "calibration: auto\n")
    monkeypatch.setenv("SIMKIT_SPEED_PROBE", "0")
    assert main(["run", "s.yaml", "--out", "out"]) == 0
    assert f"calibration      profile ci-vm-cpu ({mine / 'profile.yaml'}): measured" in capsys.readouterr().out  # (a copy)


def test_a_fingerprint_names_only_the_isa_flags_that_differ():
    m = compare_fingerprints({"isa": ["avx2", "avx512_fp16"], "cpu_family": "26"},
                             {"isa": ["avx2", "amx_bf16"], "cpu_family": "25"})  # fmt: skip
    assert m.describe() == ("isa: only the profile has avx512_fp16, only this machine has amx_bf16; "
                            "cpu_family: profile 26, this machine 25")  # fmt: skip


def test_a_run_with_another_machines_cpu_profile_warns(tmp_path, monkeypatch):
    """`calibration: auto` compares a CPU profile with the catalog (hardware threads), so a
    profile of another CPU family passes it; the run on this machine now says so once."""
    p = edited_profile(tmp_path, {"fingerprint.cpu_family": "999", "fingerprint.isa": ["avx2", "sve"]})
    prof = Profile.load(p, with_samples=False)
    monkeypatch.setattr(probe, "_DONE", {})
    monkeypatch.setattr(probe, "speed_probe", lambda _p: pytest.fail("probed another machine's profile"))
    got = probe.startup_check(prof)
    assert len(got) == 1
    assert "measured on another CPU than this machine" in got[0] and "cpu_family: profile 999" in got[0]
    assert "simkit calibrate --device cpu --catalog generic-2core-vm" in got[0]
    assert probe.startup_check(prof) == got


def test_the_start_up_probe_says_what_it_measured_and_cost(tmp_path, monkeypatch, capsys):
    """A passing probe printed nothing while adding about a second (importing torch) to the run's
    'simulated in' time; `simkit run` now prints a note with its result and time."""
    prof = Profile.load(CPU_PROFILE, with_samples=False)
    if probe.fingerprint_check(prof, None).hardware_differs():
        pytest.skip("this machine is not the CI VM the shipped CPU profile describes")
    pytest.importorskip("torch")
    same = probe.ProbeResult((probe.ProbeRow("bf16", "batch", 32, 2048, 1536, 1e-3, 1e-3),), 1, "cpu", 0.1)
    monkeypatch.setattr(probe, "speed_probe", lambda _p: same)
    monkeypatch.setattr(probe, "_DONE", {})
    probe.take_notes()
    s = tmp_path / "s.yaml"
    s.write_text(SCENARIO + "calibration: auto\n")
    assert main(["run", str(s), "--out", str(tmp_path / "out")]) == 0
    notes = [x for x in capsys.readouterr().err.splitlines() if x.startswith("note: speed probe")]
    assert len(notes) == 1 and "bf16 GEMM x1.00" in notes[0] and "SIMKIT_SPEED_PROBE=0 skips it" in notes[0]
    assert probe.take_notes() == []


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("fast", None),
        ("fast (fused loop)", None),
        ("fast; offloaded steps in closed form", None),
        ("fast (the fused loop stopped at a decode step short of KV blocks (preemption): stepped)", None),
        ("reference (Chrome trace output)", "the reference engine ran the serving loop (Chrome trace output)"),
        ("fast; offloaded steps event by event (activations off the GPU)",
         "offloaded steps were simulated event by event (activations off the GPU)"),
        ("reference (pipeline parallelism); pipeline stages event by event (replica 0 at t=1 s: x; the run was "
         "repeated event by event)",
         "the reference engine ran the serving loop (pipeline parallelism); pipeline stages were simulated event by "
         "event (replica 0 at t=1 s: x; the run was repeated event by event)"),
        ("fast; offloaded steps in closed form, event by event for steps of more sequences than gpu_batch_size (4)",
         "offloaded steps of more than gpu_batch_size (4) sequences were simulated event by event"),
    ],
)
def test_a_run_off_the_fast_path_says_so_in_words(path, expected):
    note = slow_path_note(path)
    if expected is None:
        assert note is None
    else:
        assert note == f"{expected}: the same results as the fast path, only slower to simulate " \
                       "(docs/metrics.md, engine_path, says what runs where)"


def test_simkit_run_prints_the_slower_path_line(tmp_path, capsys):
    s = tmp_path / "s.yaml"
    s.write_text(SCENARIO.replace(", execution: {device: cpu}", "").replace("ci-vm", "dgx-h100") + "calibration: none\n")
    assert main(["run", str(s), "--out", str(tmp_path / "a"), "--trace-out", str(tmp_path / "t.json")]) == 0
    out = capsys.readouterr().out
    assert "engine path: reference (Chrome trace output)" in out
    assert "  slower path      the reference engine ran the serving loop (Chrome trace output)" in out
    assert main(["run", str(s), "--out", str(tmp_path / "b")]) == 0
    assert "slower path" not in capsys.readouterr().out


def test_print_summary_without_wall_time_keeps_the_note(tmp_path, capsys):
    s = tmp_path / "s.yaml"
    s.write_text(SCENARIO.replace(", execution: {device: cpu}", "").replace("ci-vm", "dgx-h100") + "calibration: none\n")
    assert main(["run", str(s), "--out", str(tmp_path / "a"), "--engine", "reference"]) == 0
    summary = yaml.safe_load((tmp_path / "a" / "summary.json").read_text())
    capsys.readouterr()
    print_summary(summary)
    out = capsys.readouterr().out
    assert "  engine path      reference (requested)" in out and "slower path" in out


def test_a_profile_of_other_dtypes_says_so(tmp_path):
    """A CPU profile of fp32 alone used for a bf16 plan (another kernel family at another peak)
    was silent; now the run warns, naming both dtypes and the command that measures the missing one.
    A dtype of the same peak (fp16 for bf16 on a GPU) and a measured one stay quiet."""
    from simkit.scenario import load_scenario
    from simkit.simulate import simulate

    p = edited_profile(tmp_path, {"dtypes": ["fp32"]})
    s = tmp_path / "s.yaml"
    s.write_text(SCENARIO.replace("plan: {", "plan: {precision: {weights: bf16, activations: bf16, kv_cache: bf16}, ")
                 + f"calibration: {p}\n")  # fmt: skip
    warns = [w for w in simulate(load_scenario(str(s))).warnings if "measured fp32 only" in w]
    assert len(warns) == 1 and "matmuls run in bf16" in warns[0] and "--device cpu --dtypes bf16" in warns[0]
    s.write_text(SCENARIO.replace("plan: {", "plan: {precision: {weights: fp32, activations: fp32, kv_cache: fp32}, ")
                 .replace("llama-2-7b", "phi-2") + f"calibration: {p}\n")  # fmt: skip
    assert not [w for w in simulate(load_scenario(str(s))).warnings if "only, and this plan" in w]
    gpu = SCENARIO.replace(", execution: {device: cpu}", "").replace("ci-vm", "dgx-h100") + "calibration: auto\n"
    for act, warned in (("bf16", False), ("fp16", False)):
        s.write_text(gpu.replace("plan: {", f"plan: {{precision: {{weights: {act}, activations: {act}, kv_cache: {act}}}, "))
        assert bool([w for w in simulate(load_scenario(str(s))).warnings if "only, and this plan" in w]) == warned
    s.write_text(gpu.replace("plan: {", "plan: {precision: {weights: fp8, activations: fp8, kv_cache: fp16}, "))
    warns = [w for w in simulate(load_scenario(str(s))).warnings if "only, and this plan" in w]
    assert len(warns) == 1 and "'h100-sxm-vidur' measured fp16 only" in warns[0] and "--dtypes fp8" in warns[0]


def test_validate_finds_the_shipped_profile_from_any_folder(tmp_path, monkeypatch):
    """`simkit validate --device cpu` (default --profile calibration/profiles/ci-vm-cpu) failed with
    "not found" outside a checkout; a relative profile path now falls back to simkit's data folder."""
    from simkit.calibrate.validate import DEFAULT_PROFILE, load_profile

    monkeypatch.chdir(tmp_path)
    prof = load_profile(DEFAULT_PROFILE)
    assert prof.name == "ci-vm-cpu" and Path(prof.path).resolve().parent == CPU_PROFILE.resolve()
    mine = edited_profile(tmp_path, {}, name="calibration")  # a folder of the working dir wins
    assert Path(load_profile("calibration").path).resolve().parent == mine.resolve()
    with pytest.raises(CalibrationError) as e:
        load_profile("calibration/profiles/nowhere")
    assert "not found here or in simkit's data folder" in str(e.value)


def test_print_summary_names_pipeline_stages(tmp_path, capsys):
    """Found by the new-user walk (docs/walkthrough.md): the header said `tp=4 replicas=1` for the
    shipped TP 4 x PP 2 plan; a pipelined plan now shows its stages, a plan without them does not."""
    assert main(["run", "llama70b-tp4pp2", "--out", str(tmp_path / "a"), "--set", "workload.limit=20"]) == 0
    assert " tp=4 pp=2 replicas=1\n" in capsys.readouterr().out
    assert main(["run", "llama70b-tp4pp2", "--out", str(tmp_path / "b"), "--set", "workload.limit=20",
                 "--set", "plan.parallel.pp=1"]) == 0
    assert " tp=4 replicas=1\n" in capsys.readouterr().out
