"""simkit validate --offload: the weight file, direct I/O (and its fallback), the streamed model
against the same model in memory, and the end-to-end measure-vs-predict run on a tiny model."""

from __future__ import annotations

import json
import math
import os
import time

import pytest

torch = pytest.importorskip("torch")

from simkit.calibrate import validate_offload as vo  # noqa: E402

TINY = vo.OffloadConfig(layers=(2,), hidden=256, heads=4, kv_heads=2, ffn=512, vocab=1024, batch_sizes=(2,), context_lens=(16,), resident=(0, 1), decode_tokens=3, repeats=1)


@pytest.fixture
def tiny_file(tmp_path):
    wf, kept = vo.write_weight_file(TINY, 2, "fp32", tmp_path / "w.bin", keep=True)
    return wf, kept


def _region(wf, off, n):
    with open(wf.path, "rb") as f:
        f.seek(off)
        return f.read(n)


def test_weight_file_is_aligned_and_holds_the_weights(tiny_file):
    wf, kept = tiny_file
    assert os.path.getsize(wf.path) == wf.file_bytes
    assert wf.layer_stride % vo.ALIGN == 0 and wf.layer_stride >= wf.layer_payload
    assert wf.extra_offset % vo.ALIGN == 0
    for i in range(wf.num_layers):
        assert wf.layer_offset(i) % vo.ALIGN == 0
    # contiguous: layer i+1 starts where layer i's (aligned) region ends
    assert [wf.layer_offset(i) for i in range(2)] == [0, wf.layer_stride]
    # the payload is the parameter count simkit's ModelSpec counts (what the simulator streams)
    spec = vo.model_yaml(TINY, 2, 64)
    h, f, d = spec["hidden_size"], spec["ffn_size"], spec["head_dim"]
    params = h * (spec["num_heads"] + 2 * spec["num_kv_heads"]) * d + spec["num_heads"] * d * h + 3 * h * f + 2 * h
    assert sum(s.nbytes for s in wf.layer_slots) == params * 4
    for i in range(2):
        raw = _region(wf, wf.layer_offset(i), wf.layer_stride)
        for s in wf.layer_slots:
            t = torch.frombuffer(bytearray(raw[s.offset : s.offset + s.nbytes]), dtype=torch.float32).view(*s.shape)
            assert torch.equal(t, kept["layers"][i][s.name])


@pytest.mark.parametrize("direct", [None, False])
def test_direct_reads_or_fallback(tiny_file, direct):
    wf, _ = tiny_file
    r = vo.DirectReader(wf.path, direct=direct, quiet=True)
    try:
        if direct is False:
            assert r.mode == "buffered+fadvise" and not r.direct
            assert "posix_fadvise" in r.note
        else:
            assert r.mode in ("direct", "buffered+fadvise")
        buf = vo.aligned_buffer(wf.layer_stride)
        assert r.read(buf, wf.layer_offset(1), wf.layer_stride) == wf.layer_stride
        assert bytes(buf[: wf.layer_stride]) == _region(wf, wf.layer_offset(1), wf.layer_stride)
        with pytest.raises(ValueError):
            r.read(buf, 100, vo.ALIGN)  # unaligned offsets are refused
    finally:
        r.close()


def test_direct_reads_in_blocks_with_queue_depth(tiny_file):
    wf, _ = tiny_file
    r = vo.DirectReader(wf.path, block_bytes=vo.ALIGN * 16, io_depth=3, quiet=True)
    try:
        buf = vo.aligned_buffer(wf.layer_stride)
        r.read(buf, wf.layer_offset(0), wf.layer_stride)
        assert bytes(buf[: wf.layer_stride]) == _region(wf, 0, wf.layer_stride)
    finally:
        r.close()


@pytest.mark.parametrize("resident", [0, 1, 2])
def test_streamed_model_equals_in_memory_model(tiny_file, resident):
    wf, kept = tiny_file
    mem = vo.OffloadLlama(TINY, vo.InMemoryWeights(kept["layers"], kept["extra"]), "fp32", 32)
    sw = vo.StreamedWeights(wf, 2, resident, quiet=True)
    try:
        st = vo.OffloadLlama(TINY, sw, "fp32", 32)
        ids = torch.randint(0, TINY.vocab, (2, 16), generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            for m in (mem, st):
                m.alloc_cache(2)
            a, b = mem.logits(ids, 0), st.logits(ids, 0)
            assert sw.end_pass().bytes_read == (2 - resident) * wf.layer_stride
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
            tok = a.argmax(-1).view(-1, 1)
            for j in range(3):  # decode over the real KV cache
                a, b = mem.logits(tok, 16 + j), st.logits(tok, 16 + j)
                torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
                tok = a.argmax(-1).view(-1, 1)
            assert len(sw.read_log) == 4 * (2 - resident)
            # proof the streamed layers come from the file on every pass: change the last layer on
            # disk and the next pass sees it (unless that layer is resident)
            fd = os.open(wf.path, os.O_WRONLY)
            try:
                os.pwrite(fd, bytes(wf.layer_stride), wf.layer_offset(1))
                os.fsync(fd)
            finally:
                os.close(fd)
            a, b = mem.logits(tok, 19), st.logits(tok, 19)
            if resident >= 2:
                torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
            else:
                assert not torch.allclose(a, b, rtol=1e-3, atol=1e-3)
    finally:
        sw.close()


def test_prediction_is_the_offloaded_scenario(tmp_path):
    import yaml

    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump(vo.model_yaml(TINY, 2, 64)))
    d = vo.scenario_dict(str(p), "fp32", 2, 1, 2, 16, 3, "none", 1 << 20, 4)
    assert d["hardware"] == "ci-vm" and d["plan"]["execution"]["device"] == "cpu"
    assert d["plan"]["offload"] == {
        "weights": {"gpu": 0, "disk": 1}, "resident_layers": 1, "overlap": True, "io_block_size": "1048576 B", "io_queue_depth": 4,
    }
    assert d["plan"]["batching"]["policy"] == "static"
    pr0 = vo.predict(str(p), "fp32", 2, 0, 2, 16, 3, "none")
    pr2 = vo.predict(str(p), "fp32", 2, 2, 2, 16, 3, "none")
    for x in (pr0.prefill_s, pr0.decode_s, pr2.prefill_s, pr2.decode_s):
        assert math.isfinite(x) and x > 0
    assert pr0.decode_s > pr2.decode_s  # streaming both layers costs more than none
    assert pr0.resources["nvme_read"]["bytes"] > 0


def test_end_to_end_tiny(tmp_path, capsys):
    out = tmp_path / "r.json"
    t0 = time.perf_counter()
    rc = vo.main(
        ["--offload", "--layers", "2", "--hidden", "256", "--heads", "4", "--kv-heads", "4", "--ffn", "512", "--vocab", "1024",
         "--batch-sizes", "1", "--context-lens", "16", "--resident", "0,1", "--decode-tokens", "3", "--repeats", "1", "--rounds", "2",
         "--dir", str(tmp_path / "w"), "--profile", "none", "--json", str(out)]
    )
    assert rc == 0
    assert time.perf_counter() - t0 < 30
    text = capsys.readouterr().out
    assert "measured ms" in text and "median |error|" in text
    res = json.loads(out.read_text())
    assert {"median_ape", "p90_ape", "rows"} <= set(res)
    assert res["io_mode"] in ("direct", "buffered+fadvise")
    assert res["dtype"] == "fp32" and res["calibration"] == "none"
    assert len(res["rows"]) == 4  # 2 resident counts x (prefill, decode)
    assert all(len(r["measured_all_s"]) == 2 for r in res["rows"])  # 2 rounds x 1 repeat
    for r in res["rows"]:
        for k in ("measured_s", "predicted_s"):
            assert math.isfinite(r[k]) and r[k] > 0
        assert r["abs_error"] == pytest.approx(abs(r["predicted_s"] - r["measured_s"]) / r["measured_s"])
        assert r["phase"] in ("prefill", "decode")
        assert r["streamed_bytes_per_pass"] == (2 - r["resident"]) * res["model"]["layer_stride"]
    assert 0 <= res["median_ape"] <= res["p90_ape"] or math.isclose(res["median_ape"], res["p90_ape"])
    assert res["ssd_bench_read_bandwidth_now"] > 0 and res["reader_bandwidth_median"] > 0
    assert res["io_block_size"] % vo.ALIGN == 0 and res["io_queue_depth"] >= 1
    assert not list((tmp_path / "w").glob("*.bin"))  # the weight file is removed
    # re-predicting the stored measurements gives the same predictions
    rc = vo.main(["--from-json", str(out), "--json", str(tmp_path / "again.json")])
    again = json.loads((tmp_path / "again.json").read_text())
    assert rc == 0 and [r["predicted_s"] for r in again["rows"]] == pytest.approx([r["predicted_s"] for r in res["rows"]])


def test_prediction_with_the_shipped_cpu_profile(tmp_path):
    """The calibrated path (profile efficiencies, measured SSD link) simulates without error."""
    import yaml

    prof = vo.read_profile_facts(vo.DEFAULT_PROFILE)  # (shipped: a missing one is refused)
    assert prof is not None
    dtype = "bf16" if "bf16" in vo.profile_dtypes(prof) else "fp32"
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump(vo.model_yaml(TINY, 2, 64)))
    cal = str(os.path.dirname(prof["_path"]))
    for resident in (0, 2):
        pr = vo.predict(str(p), dtype, 2, resident, 2, 16, 3, cal)
        assert math.isfinite(pr.prefill_s) and pr.prefill_s > 0
        assert math.isfinite(pr.decode_s) and pr.decode_s > 0


def test_bad_arguments():
    with pytest.raises(vo.CalibrationError):
        vo.OffloadConfig(hidden=100, heads=3).check()
    with pytest.raises(vo.CalibrationError):
        vo.OffloadConfig(decode_tokens=1).check()
    with pytest.raises(vo.CalibrationError):
        vo.OffloadConfig(block_bytes=1000).check()


def test_default_dir_is_outside_the_package_and_skips_tmpfs(tmp_path, monkeypatch):
    """The weight file's default folder: the system temporary folder on a disk, the current
    folder when the temporary folder is tmpfs, never the package's own folder (a wheel's)."""
    import os

    from simkit.calibrate import validate_offload as vo

    disk_tmp, cwd = tmp_path / "tmp", tmp_path / "cwd"
    disk_tmp.mkdir()
    cwd.mkdir()
    monkeypatch.setattr(vo.tempfile, "gettempdir", lambda: str(disk_tmp))
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(vo, "filesystem_of", lambda p: "ext4")
    d = vo._default_dir()
    assert os.path.dirname(d) == str(disk_tmp.resolve())
    monkeypatch.setattr(vo, "filesystem_of", lambda p: "tmpfs" if p.startswith(str(disk_tmp.resolve())) else "ext4")
    d2 = vo._default_dir()
    assert os.path.dirname(d2) == str(cwd.resolve())
    monkeypatch.setattr(vo, "filesystem_of", lambda p: "tmpfs")
    with pytest.raises(vo.CalibrationError, match="--dir"):
        vo._default_dir()
