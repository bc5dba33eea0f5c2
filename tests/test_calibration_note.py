"""Which efficiency source a run's ``calibration`` text names, and the note for compared runs
that mix measured profiles with datasheet defaults."""

from __future__ import annotations

from simkit.cost.profile import efficiency_sources, mixed_calibration_note

H100 = ("profile h100-sxm-vidur (calibration/profiles/h100-sxm-vidur/profile.yaml): measured gemm, elementwise; "
        "datasheet defaults for attn_prefill, attn_decode")


def test_sources_of_one_device_and_of_a_fleet():
    assert efficiency_sources(H100) == [(None, "profile h100-sxm-vidur")]  # "datasheet defaults for ..." is a class list
    assert efficiency_sources("datasheet defaults (calibration: none)") == [(None, "datasheet defaults")]
    assert efficiency_sources("datasheet defaults (no calibration profile's fingerprint matches)") == [(None, "datasheet defaults")]
    fleet = f"h100-sxm: {H100}; l4: datasheet defaults (no calibration profile matches)"
    assert efficiency_sources(fleet) == [("h100-sxm", "profile h100-sxm-vidur"), ("l4", "datasheet defaults")]
    assert efficiency_sources("") == []


def test_note_only_when_measured_and_datasheet_are_mixed():
    ds = "datasheet defaults (no calibration profile matches)"
    note = mixed_calibration_note([("h100-sxm", H100), ("h200", ds), ("h200", ds)], "runs")
    assert note is not None and note.startswith("The runs mix measured and datasheet efficiencies")
    assert "h100-sxm (h100-sxm-vidur) with a calibration profile; h200 with the datasheet defaults" in note
    # one fleet candidate mixes by itself; a device named in the text wins over the row's device
    assert "l4 with the datasheet defaults" in mixed_calibration_note([("h100-sxm+l4", f"h100-sxm: {H100}; l4: {ds}")], "candidates")
    assert mixed_calibration_note([("h100-sxm", H100), ("a100", "profile a100-vidur (x)")], "runs") is None  # two profiles
    assert mixed_calibration_note([("h200", ds), ("l4", "datasheet defaults (calibration: none)")], "runs") is None
    assert mixed_calibration_note([("h100-sxm", H100), ("l4", None)], "runs") is None  # a failed run has no text
