"""Calibration profiles: measured (or imported) operator timings and the efficiency models fitted to them.

A profile is a folder::

    calibration/profiles/NAME/
        profile.yaml   # human-readable: device facts, source, licence, fitted parameters, errors
        samples.csv    # every raw sample the fit used (long format, one row per configuration)
        models.json    # the fitted residual trees (plain arrays), when a class has them

``profile.yaml`` (``simkit_profile: 1``)::

    simkit_profile: 1
    name: h100-sxm-vidur
    device: {kind: gpu|cpu, catalog: h100-sxm, description: ..., name/memory/clocks/driver/
             torch_version/threads when known, peak_flops: {dtype: FLOP/s}, mem_bandwidth: B/s,
             sm_count: N,            # peaks = the roofline the fitted efficiencies refer to
             fingerprint: {...}}     # what identifies the device (see below)
    source: where the numbers come from
    license: their licence
    samples: samples.csv            # relative to profile.yaml
    models: models.json             # relative to profile.yaml (absent if no class has trees)
    efficiency:                     # per op class: gemm, elementwise, attn_prefill, attn_decode
      gemm:
        measured: true
        model: {kind, base: {launch_s, compute_efficiency, memory_efficiency, sharpness},
                base_by_dtype: {DTYPE: {launch_s, ...}},   # optional (attention classes)
                base_inputs: bytes,                        # optional (GPU elementwise: FLOPs left out)
                residual: {file, key, trees, features, ...}}
        fit_error: {median_ape: 0.03, p90_ape: 0.09, n: 16576}     # fractions, in-sample
        cross_validation: {method: leave-one-model-out, ...}       # optional
        note: ...
      attn_decode: {measured: false, note: "no attention timings in the source data: ..."}
    launch_overhead: {gemm: s, elementwise: s, attn_prefill: s, attn_decode: s}
    links: {h2d_pinned: {bandwidth, latency, fit_error}, ...}      # optional
    memory: {stream_copy: {bandwidth, latency, ...}, ...}          # optional
    ssd: {read: {...}, write: {...}, seq_read: {...}}              # optional
    collectives: {TOPOLOGY: {KIND: {NUM_GPUS: {algorithm, bands, fit_error}}}}   # optional
    threads: N                                                     # optional
    host_overhead: {per_iteration_s, per_sequence_s, source}      # optional (see below)

Samples CSV columns (blank where not applicable): ``op_class, op, dtype, m, n, k, numel, batch,
tokens, ctx, heads, kv_heads, head_dim, bytes, flops, bytes_moved, time_s, time_s_p10, time_s_p90,
reps, source, tp`` plus optional ``block_size, queue_depth, pinned, direction, num_gpus, threads``
(and others, e.g. ``topology``, ``devices_per_node``, ``raw_times``). ``bytes_moved`` is what the
roofline counts for compute operators; ``bytes`` the payload of copies, SSD I/O and collectives.
Row classes: the four operator classes; ``launch`` (op = canonical operator, time = fixed cost);
``copy`` (op memcpy/h2d/d2h/d2d with ``direction`` and ``pinned``); ``link`` (op = link kind);
``mem_bw`` (stream_copy/read/write); ``ssd_read``/``ssd_write``/``ssd_seq_read`` (random reads, random writes, sequential
reads; bytes per repetition, time per
repetition, ``block_size``, ``queue_depth``); ``collective`` (op = all_reduce/send_recv/...,
``bytes`` per GPU, ``num_gpus``, ``topology``).

``device.fingerprint`` identifies the device the numbers describe (``"unknown"`` where the source
does not say). CPU: ``vendor, cpu_family, cpu_model, name, isa`` (the instruction-set extensions
that select different GEMM kernels, :data:`KERNEL_ISA_FLAGS`), ``logical_cpus, threads,
torch_version``. GPU: ``name, sm_count, memory_bytes, sm_clock_max_mhz, mem_clock_max_mhz,
driver_version, cuda_version, torch_version``. ``calibration: auto`` selects a profile only when
its fingerprint agrees with the catalog device (:func:`catalog_fingerprint`), and ``simkit
validate`` only when it agrees with the machine it runs on (:func:`compare_fingerprints`).

``host_overhead`` is the host time of one engine iteration (scheduling, sampling, detokenisation,
Python), ``per_iteration_s + per_sequence_s x sequences in the batch``, added once per iteration
(simkit.cost.iteration); profiles without it use :data:`DEFAULT_HOST_OVERHEAD` per device kind.
``simkit calibrate --device cuda`` measures it (:mod:`simkit.calibrate.host_gap`, ``source:
measured ...``); the Vidur profiles carry a published value.

This module is the schema (file names, fingerprints, finding profile files); the cost model reads
and evaluates profiles in :mod:`simkit.cost.profile`, ``simkit calibrate`` measures, fits and
writes them (:mod:`simkit.calibrate`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simkit.errors import CalibrationError

PROFILE_VERSION = 1
PROFILE_FILE = "profile.yaml"
SAMPLES_FILE = "samples.csv"
MODELS_FILE = "models.json"

# ---------------------------------------------------------------------------------------------
# Device fingerprints
# ---------------------------------------------------------------------------------------------
UNKNOWN = "unknown"
KERNEL_ISA_FLAGS = (
    "avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile",
    "asimd", "sve", "bf16",
)  # fmt: skip
"""CPU flags (/proc/cpuinfo) that make oneDNN/MKL pick a different GEMM or attention kernel."""
CPU_FINGERPRINT_KEYS = ("vendor", "cpu_family", "cpu_model", "name", "isa", "logical_cpus", "threads", "torch_version")
GPU_FINGERPRINT_KEYS = (
    "name", "sm_count", "memory_bytes", "sm_clock_max_mhz", "mem_clock_max_mhz", "driver_version", "cuda_version",
    "torch_version",
)  # fmt: skip
RUN_KEYS = ("threads", "torch_version", "driver_version", "cuda_version")
"""Fingerprint keys that describe the software/run rather than the silicon."""
MEMORY_TOLERANCE = 0.05
"""Relative difference of ``memory_bytes`` still taken as equal (datasheet GB vs reported GiB)."""


def fingerprint_keys(kind: str) -> tuple[str, ...]:
    return CPU_FINGERPRINT_KEYS if kind == "cpu" else GPU_FINGERPRINT_KEYS


def _norm(key: str, v: Any) -> Any:
    if v is None or (isinstance(v, str) and v.strip().lower() in ("", UNKNOWN)):
        return UNKNOWN
    if key == "isa":
        if isinstance(v, str):
            v = v.replace(",", " ").split()
        return sorted({str(f).strip().lower() for f in v if str(f).strip().lower() in KERNEL_ISA_FLAGS})
    if key in ("logical_cpus", "threads", "sm_count", "memory_bytes"):
        return int(float(v))
    if key in ("sm_clock_max_mhz", "mem_clock_max_mhz"):
        return float(v)
    return str(v).strip()


def make_fingerprint(kind: str, facts: Mapping[str, Any]) -> dict[str, Any]:
    """The fingerprint of a device from its facts (the keys simkit.calibrate.bench records;
    ``vector_flags`` gives ``isa``); ``"unknown"`` for each key the facts lack."""
    src = dict(facts)
    if "isa" not in src and "vector_flags" in src:
        src["isa"] = src["vector_flags"]
    out = {}
    for k in fingerprint_keys(kind):
        try:
            out[k] = _norm(k, src.get(k))
        except (TypeError, ValueError):  # e.g. nvidia-smi's "[N/A]" for a clock
            out[k] = UNKNOWN
    return out


def parse_fingerprint(raw: Any, kind: str, where: str) -> dict[str, Any]:
    """A profile's ``device.fingerprint`` checked and normalised; CalibrationError naming the key."""
    if not isinstance(raw, Mapping):
        raise CalibrationError("expected a mapping of fingerprint keys", where=where, key="device.fingerprint")
    keys = fingerprint_keys(kind)
    extra = sorted(set(map(str, raw)) - set(keys))
    if extra:
        raise CalibrationError(f"unknown fingerprint key(s) {', '.join(extra)} for a {kind} (expected {', '.join(keys)})",
                               where=where, key=f"device.fingerprint.{extra[0]}")  # fmt: skip
    out = {}
    for k in keys:
        try:
            out[k] = _norm(k, raw.get(k))
        except (TypeError, ValueError):
            raise CalibrationError(f"expected a number or 'unknown', got {raw.get(k)!r}", where=where,
                                   key=f"device.fingerprint.{k}") from None  # fmt: skip
    return out


@dataclass(frozen=True)
class FingerprintMatch:
    """How a profile's fingerprint compares with a device's: the keys whose known values differ
    (key, profile's value, device's value), and the keys unknown on either side."""

    differs: tuple[tuple[str, Any, Any], ...]
    unknown: tuple[str, ...]
    compared: tuple[str, ...]

    @property
    def matches(self) -> bool:
        return not self.differs

    def hardware_differs(self) -> tuple[tuple[str, Any, Any], ...]:
        return tuple(d for d in self.differs if d[0] not in RUN_KEYS)

    def describe(self, other: str = "this machine") -> str:
        def show(k: str, a: Any, b: Any) -> str:
            if isinstance(a, list) and isinstance(b, list):  # ISA flags: name only those on one side
                sides = [(f"only the profile has {','.join(sorted(set(a) - set(b)))}" if set(a) - set(b) else ""),
                         (f"only {other} has {','.join(sorted(set(b) - set(a)))}" if set(b) - set(a) else "")]
                return f"{k}: {', '.join(x for x in sides if x)}"
            return f"{k}: profile {a}, {other} {b}"

        return "; ".join(show(k, a, b) for k, a, b in self.differs)


def compare_fingerprints(profile_fp: Mapping[str, Any], other_fp: Mapping[str, Any],
                         keys: Sequence[str] | None = None) -> FingerprintMatch:  # fmt: skip
    """Compare the keys both sides carry (``keys``: only those). Unknown values never differ;
    ``memory_bytes`` is equal within :data:`MEMORY_TOLERANCE`, names case-insensitively."""
    differs, unknown, compared = [], [], []
    for k in keys if keys is not None else [k for k in profile_fp if k in other_fp]:
        a, b = profile_fp.get(k, UNKNOWN), other_fp.get(k, UNKNOWN)
        if a == UNKNOWN or b == UNKNOWN:
            unknown.append(k)
            continue
        compared.append(k)
        if k == "memory_bytes":
            same = abs(float(a) - float(b)) <= MEMORY_TOLERANCE * max(float(a), float(b))
        elif k == "name":
            same = str(a).lower() == str(b).lower()
        else:
            same = a == b
        if not same:
            differs.append((k, a, b))
    return FingerprintMatch(tuple(differs), tuple(unknown), tuple(compared))


def catalog_fingerprint(kind: str, item: Any) -> dict[str, Any]:
    """What a catalog GPU/CPU entry says about the keys of a fingerprint: a GPU's SM count and
    memory, a CPU socket's hardware threads (the CPU count a machine with it reports)."""
    if kind == "gpu":
        return {"sm_count": int(item.sm_count), "memory_bytes": int(item.memory)}
    return {"logical_cpus": int(item.threads)}


DEVICE_NUMBERS = ("mem_bandwidth", "dram_bandwidth", "llc_bytes", "memory_bytes")
"""Device facts the predictions or the speed probe read as a positive number (bytes/s, bytes)."""
DEVICE_COUNTS = ("sm_count", "threads", "logical_cpus")
"""Device facts read as a whole number >= 1."""


def check_device_numbers(device: Mapping[str, Any], where: str) -> None:
    """The numeric device facts a profile's predictions rest on (``peak_flops.<dtype>``,
    :data:`DEVICE_NUMBERS`, :data:`DEVICE_COUNTS`) and ``clock``, checked where present:
    CalibrationError naming the key and what it takes (a hand-edited or damaged profile.yaml
    must not give a traceback or, with a negative rate, a silently wrong roofline)."""
    import math

    def positive(v: Any) -> bool:
        return not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v) and v > 0

    peaks = device.get("peak_flops")
    if peaks is not None:
        if not isinstance(peaks, Mapping):
            raise CalibrationError("expected a mapping of dtype to FLOP/s", where=where, key="device.peak_flops")
        for dt, v in peaks.items():
            if not positive(v):
                raise CalibrationError(f"expected FLOP/s > 0, got {v!r}", where=where, key=f"device.peak_flops.{dt}")
    for k in DEVICE_NUMBERS:
        if device.get(k) is not None and not positive(device[k]):
            raise CalibrationError(f"expected a number > 0, got {device[k]!r}", where=where, key=f"device.{k}")
    for k in DEVICE_COUNTS:
        v = device.get(k)
        if v is not None and not (positive(v) and float(v) == int(v)):
            raise CalibrationError(f"expected a whole number >= 1, got {v!r}", where=where, key=f"device.{k}")
    dtypes = device.get("dtypes")
    if dtypes is not None and not (isinstance(dtypes, list) and all(isinstance(d, str) and d.strip() for d in dtypes)):
        raise CalibrationError(f"expected a list of dtype names (the dtypes the samples measured), got {dtypes!r}"[:200],
                               where=where, key="device.dtypes")  # fmt: skip
    clock = device.get("clock")
    if clock is not None and clock not in ("wall", "cpu"):
        raise CalibrationError(f"expected wall or cpu (the clock the samples were timed on), got {clock!r}",
                               where=where, key="device.clock")  # fmt: skip


RUN_RECORD_COUNTS = {
    "speed_sentinel.slow_stretches": ("samples", "flagged", "remeasured", "replaced", "kept_slow", "kept_much_slower"),
    "contention": ("samples_checked", "contended", "remeasured", "still_contended"),
}
"""Counts of a CPU calibration's run records (``device.<section>.<key>``) that ``simkit validate``
compares to warn about an untrustworthy profile."""
RUN_RECORD_FRACTIONS = {"speed_sentinel.slow_stretches": ("threshold", "warn_slowdown")}


def check_run_records(device: Mapping[str, Any], where: str) -> None:
    """The run records of a CPU calibration, where present: ``device.speed_sentinel`` (its
    ``slow_stretches``), ``device.contention`` and ``device.openmp_env`` are mappings, their counts
    whole numbers >= 0 and their slowdown thresholds fractions >= 0. CalibrationError naming the
    key (a string there was a traceback in ``simkit validate``, a NaN count silently no warning)."""
    import math

    for name in ("speed_sentinel", "contention", "openmp_env"):
        if device.get(name) is not None and not isinstance(device[name], Mapping):
            raise CalibrationError(f"expected a mapping, got {device[name]!r}"[:160], where=where, key=f"device.{name}")
    for sect, keys in RUN_RECORD_COUNTS.items():
        node: Any = device
        for part in sect.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if node is None:
            continue
        if not isinstance(node, Mapping):
            raise CalibrationError(f"expected a mapping, got {node!r}"[:160], where=where, key=f"device.{sect}")
        for k in keys:
            v = node.get(k)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0 or v != int(v):
                raise CalibrationError(f"expected a whole number >= 0, got {v!r}", where=where, key=f"device.{sect}.{k}")
        for k in RUN_RECORD_FRACTIONS.get(sect, ()):
            v = node.get(k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0):
                raise CalibrationError(f"expected a fraction >= 0, got {v!r}", where=where, key=f"device.{sect}.{k}")


# ---------------------------------------------------------------------------------------------
# Host overhead defaults
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HostOverhead:
    """Host seconds of one engine iteration: ``per_iteration_s + per_sequence_s x sequences``."""

    per_iteration_s: float
    per_sequence_s: float
    source: str

    def time(self, num_seqs: int) -> float:
        return self.per_iteration_s + self.per_sequence_s * float(num_seqs)

    def to_dict(self) -> dict[str, Any]:
        return {"per_iteration_s": self.per_iteration_s, "per_sequence_s": self.per_sequence_s, "source": self.source}


NO_HOST_OVERHEAD = HostOverhead(0.0, 0.0, "none")


def parse_host_overhead(raw: Any, where: str) -> HostOverhead:
    """A profile's ``host_overhead`` section; CalibrationError naming the key."""
    if not isinstance(raw, Mapping):
        raise CalibrationError("expected a mapping with per_iteration_s and per_sequence_s", where=where, key="host_overhead")
    vals = []
    for k in ("per_iteration_s", "per_sequence_s"):
        v = raw.get(k)
        if isinstance(v, bool) or not isinstance(v, int | float) or not v >= 0:
            raise CalibrationError(f"expected seconds >= 0, got {v!r}", where=where, key=f"host_overhead.{k}")
        vals.append(float(v))
    return HostOverhead(vals[0], vals[1], str(raw.get("source", "")))


# ---------------------------------------------------------------------------------------------
# Finding profile files
# ---------------------------------------------------------------------------------------------
PROFILE_PATH_ENV = "SIMKIT_PROFILE_PATH"
"""Folders of calibration profiles (``os.pathsep``-separated) searched before the per-user
folder and the shipped profiles."""
USER_FOLDER = "user"
SHIPPED_FOLDER = "shipped"


def profiles_dir() -> Path:
    """The shipped profiles: ``calibration/profiles`` of simkit's data folder (the checkout, the
    installed package's data, or ``SIMKIT_HOME``)."""
    from simkit.specs.catalog import repo_path

    return repo_path("calibration", "profiles")


def user_profiles_dir() -> Path | None:
    """The per-user profile folder: ``$XDG_DATA_HOME/simkit/profiles``, by default
    ``~/.local/share/simkit/profiles`` (a relative ``XDG_DATA_HOME`` is ignored, as the XDG
    specification says); None when there is no home folder to put it in."""
    import os

    xdg = os.environ.get("XDG_DATA_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "simkit" / "profiles"
    try:
        return Path.home() / ".local" / "share" / "simkit" / "profiles"
    except RuntimeError:  # no HOME and no password entry
        return None


@dataclass(frozen=True)
class ProfileFolder:
    """One folder ``calibration: auto`` searches: its path and where it comes from
    (:data:`PROFILE_PATH_ENV`, :data:`USER_FOLDER` or :data:`SHIPPED_FOLDER`)."""

    path: Path
    origin: str


def profile_search_path() -> list[ProfileFolder]:
    """The folders ``calibration: auto`` searches, in order: each folder of ``SIMKIT_PROFILE_PATH``,
    the per-user folder (:func:`user_profiles_dir`, whether or not it exists yet), the shipped
    profiles (:func:`profiles_dir`); a folder given twice is searched once, at its first place.
    A ``SIMKIT_PROFILE_PATH`` entry that is not an existing folder is a CalibrationError (a typo
    there must not silently leave the run with other profiles)."""
    import os

    out: list[ProfileFolder] = []
    for entry in os.environ.get(PROFILE_PATH_ENV, "").split(os.pathsep):
        if not entry.strip():
            continue
        p = Path(entry).expanduser()
        if not p.is_dir():
            what = "a file" if p.exists() else "missing"
            raise CalibrationError(f"{entry!r} is {what}: expected existing folders of calibration profiles "
                                   f"(NAME/profile.yaml), separated by {os.pathsep!r}", where=PROFILE_PATH_ENV)  # fmt: skip
        out.append(ProfileFolder(p, PROFILE_PATH_ENV))
    user = user_profiles_dir()
    if user is not None:
        out.append(ProfileFolder(user, USER_FOLDER))
    out.append(ProfileFolder(profiles_dir(), SHIPPED_FOLDER))
    seen: set[str] = set()
    unique = []
    for f in out:
        key = str(f.path.resolve())
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


@dataclass(frozen=True)
class FoundProfile:
    """A profile.yaml ``calibration: auto`` can see: its file, its device facts (read without the
    fitted models), the folder of the search path it was found in and that folder's origin."""

    file: Path
    device: dict[str, Any]
    folder: Path
    origin: str

    @property
    def measured_at(self) -> Any:
        return _measured_at(self.device.get("measured_at"))


def _measured_at(v: Any) -> Any:
    """``device.measured_at`` as an aware datetime (UTC when it names no zone), or None when it is
    missing or not a date and time."""
    from datetime import UTC, datetime

    if isinstance(v, str):
        try:
            v = datetime.fromisoformat(v.strip())
        except ValueError:
            return None
    if not isinstance(v, datetime):
        return None
    return v if v.tzinfo is not None else v.replace(tzinfo=UTC)


def _profile_files(folder: Path) -> list[Path]:
    """The profile.yaml files of one searched folder: ``folder/*/profile.yaml``, or
    ``folder/profile.yaml`` when the folder is itself a profile."""
    if (folder / PROFILE_FILE).is_file():
        return [folder / PROFILE_FILE]
    try:
        return sorted(folder.glob(f"*/{PROFILE_FILE}"))
    except OSError:
        return []


def list_profiles() -> tuple[list[FoundProfile], list[str]]:
    """Every profile ``calibration: auto`` can see, in the order it tries them, and one warning per
    profile.yaml it skips (unreadable, malformed YAML, or no ``device`` mapping: the file and the
    problem). Order: the folders of :func:`profile_search_path` in turn; within one folder the
    newest ``device.measured_at`` first (profiles without one after those with one), then by
    folder name."""
    from simkit.specs.yamlio import load_text

    found: list[FoundProfile] = []
    skipped: list[str] = []
    for folder in profile_search_path():
        if not folder.path.is_dir():
            continue
        here = []
        for f in _profile_files(folder.path):
            try:
                head = _device_block(f)
                data = load_text(head, lasting=True)  # (every run reads the profiles)
            except UnicodeDecodeError as e:  # (an OSError's strerror it has not)
                skipped.append(f"calibration profile {f} skipped: not UTF-8 text (byte {e.object[e.start]:#04x} at "
                               f"offset {e.start} of its device section)")  # fmt: skip
                continue
            except OSError as e:
                skipped.append(f"calibration profile {f} skipped: unreadable ({e.strerror or e.__class__.__name__})")
                continue
            except ValueError as e:
                mark = getattr(e.__cause__, "problem_mark", None)
                what = (f"malformed YAML at line {mark.line + 1}: {getattr(e.__cause__, 'problem', '')}" if mark is not None
                        else str(e).splitlines()[0])  # fmt: skip
                skipped.append(f"calibration profile {f} skipped: {what}")
                continue
            dev = data.get("device") if isinstance(data, Mapping) else None
            if not isinstance(dev, Mapping):
                skipped.append(f"calibration profile {f} skipped: device: expected a mapping of device facts "
                               f"(kind, catalog, fingerprint, ...), got {type(dev).__name__}")  # fmt: skip
                continue
            here.append(FoundProfile(f, dict(dev), folder.path, folder.origin))
        # newest first: sort by name, then (stable) by time, newest first, undated last
        here.sort(key=lambda p: p.file.parent.name)
        dated = sorted((p for p in here if p.measured_at is not None), key=lambda p: p.measured_at, reverse=True)
        found += dated + [p for p in here if p.measured_at is None]
    return found, skipped


def search_profiles(device_kind: str, catalog_name: str) -> tuple[list[FoundProfile], list[str]]:
    """The profiles of :func:`list_profiles` whose ``device.kind`` and ``device.catalog`` match,
    in the same order, and the warnings about skipped files."""
    found, skipped = list_profiles()
    keep = [p for p in found if str(p.device.get("catalog")) == str(catalog_name)
            and str(p.device.get("kind", device_kind)) == str(device_kind)]  # fmt: skip
    return keep, skipped


def find_profiles(device_kind: str, catalog_name: str) -> list[tuple[Path, dict[str, Any]]]:
    """(profile.yaml, device facts) of :func:`search_profiles`, in the order ``auto`` tries them."""
    return [(p.file, p.device) for p in search_profiles(device_kind, catalog_name)[0]]


def find_profile(device_kind: str, catalog_name: str) -> Path | None:
    """The first profile.yaml of :func:`find_profiles`, or None."""
    found = find_profiles(device_kind, catalog_name)
    return found[0][0] if found else None


def _device_block(f: Path) -> str:
    """The top of profile.yaml up to (excluding) the efficiency section: enough for device facts,
    without parsing the whole file."""
    lines = []
    with open(f, encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("efficiency:"):
                break
            lines.append(line)
    return "".join(lines)
