#!/usr/bin/env python3
"""Open a neurostimd recording with the field's tools and compare what they
read with what the run produced.

    python3 scripts/check_openephys.py RECORDING_DIR EXPECTED_DIR

EXPECTED_DIR holds what the test wrote from the run's own records (float64
.npy, one value per sample): v_mv.npy, command.npy, applied.npy, and
sample_numbers.npy (int64). Checks, with python-neo's OpenEphysBinaryRawIO
and SpikeInterface's read_openephys:
  - both find the acquired and the controller streams at the recorded rate;
  - sample counts equal the run's;
  - units and gains as written (mV for V; the plant's current unit);
  - every scaled value equals the run's within half an int16 step;
  - the TTL event channel is there and its epochs pair up.
Prints a JSON line of what it measured; exits non-zero on any mismatch.
"""
import json
import os
import sys

import numpy as np


def main(rec, exp):
    v = np.load(os.path.join(exp, "v_mv.npy"))
    cmd = np.load(os.path.join(exp, "command.npy"))
    applied = np.load(os.path.join(exp, "applied.npy"))
    sn = np.load(os.path.join(exp, "sample_numbers.npy"))
    side = json.load(open(os.path.join(rec, "neurostimd.json")))
    rate = side["recording"]["sample_rate_hz"]
    vbit = side["recording"]["v_bit_mv"]
    ibit = side["recording"]["current_bit"]
    out = {}

    # ---------------------------------------------------------------- neo
    from neo.rawio import OpenEphysBinaryRawIO

    io = OpenEphysBinaryRawIO(dirname=rec)
    io.parse_header()
    streams = list(io.header["signal_streams"]["name"])
    acq = [i for i, s in enumerate(streams) if s.endswith("acquired")]
    ctl = [i for i, s in enumerate(streams) if s.endswith("controller")]
    assert len(acq) == 1 and len(ctl) == 1, f"neo streams: {streams}"
    acq, ctl = acq[0], ctl[0]
    for si, n_ch in ((acq, 1), (ctl, 3)):
        n = io.get_signal_size(0, 0, si)
        assert n == len(v), f"neo: stream {streams[si]} has {n} samples, the run {len(v)}"
        assert io.get_signal_sampling_rate(si) == rate, io.get_signal_sampling_rate(si)
        sid = io.header["signal_streams"]["id"][si]
        chans = io.header["signal_channels"][io.header["signal_channels"]["stream_id"] == sid]
        assert len(chans) == n_ch, f"neo: {streams[si]} has {len(chans)} channels"
    chans = io.header["signal_channels"]
    vchan = chans[chans["stream_id"] == io.header["signal_streams"]["id"][acq]][0]
    assert vchan["units"] == "mV", vchan["units"]
    assert abs(vchan["gain"] - vbit) < 1e-12, (vchan["gain"], vbit)
    raw = io.get_analogsignal_chunk(0, 0, stream_index=acq)
    vv = io.rescale_signal_raw_to_float(raw, dtype="float64", stream_index=acq)[:, 0]
    dv = np.max(np.abs(vv - v))
    assert dv <= vbit / 2 + 1e-9, f"neo: V differs by {dv} mV (half a step is {vbit / 2})"
    raw = io.get_analogsignal_chunk(0, 0, stream_index=ctl)
    cc = io.rescale_signal_raw_to_float(raw, dtype="float64", stream_index=ctl)
    cunits = list(chans[chans["stream_id"] == io.header["signal_streams"]["id"][ctl]]["units"])
    assert cunits[:2] == [side["recording"]["current_units"]] * 2 and cunits[2] == "mV", cunits
    dc = max(np.max(np.abs(cc[:, 0] - cmd)), np.max(np.abs(cc[:, 1] - applied)))
    assert dc <= ibit / 2 + 1e-9, f"neo: currents differ by {dc} (half a step is {ibit / 2})"
    t0 = io.get_signal_t_start(0, 0, acq)
    assert abs(t0 - sn[0] / rate) < 1e-9, (t0, sn[0])
    ev = [i for i, n in enumerate(io.header["event_channels"]["name"])]
    assert len(ev) == 1, io.header["event_channels"]
    n_epochs = io.event_count(0, 0, 0)
    import neo

    out["neo"] = {
        "version": neo.__version__,
        "streams": streams,
        "samples": int(len(vv)),
        "v_max_abs_diff_mv": float(dv),
        "current_max_abs_diff": float(dc),
        "event_epochs": int(n_epochs),
    }

    # ------------------------------------------------------ SpikeInterface
    import warnings

    import spikeinterface
    import spikeinterface.extractors as se
    from spikeinterface.extractors.neoextractors import OpenEphysBinaryRecordingExtractor

    names = OpenEphysBinaryRecordingExtractor.get_streams(rec)[0]
    acq_name = [n for n in names if n.endswith("acquired")][0]
    ctl_name = [n for n in names if n.endswith("controller")][0]
    r = se.read_openephys(rec, stream_name=acq_name)
    assert r.get_num_samples() == len(v), (r.get_num_samples(), len(v))
    assert r.get_sampling_frequency() == rate
    assert r.get_num_channels() == 1
    # Voltage channels come back in µV, as float32: allow its rounding
    # (|V| < 200 mV is < 2e5 µV, whose float32 spacing is under 0.016 µV).
    tr = r.get_traces(return_in_uV=True)[:, 0]
    dsi = np.max(np.abs(tr.astype(np.float64) / 1000.0 - v))
    assert dsi <= vbit / 2 + 2e-5, f"SpikeInterface: V differs by {dsi} mV"
    with warnings.catch_warnings():
        # The controller stream mixes currents and a voltage (the forecast).
        warnings.simplefilter("ignore")
        rc = se.read_openephys(rec, stream_name=ctl_name)
    assert rc.get_num_samples() == len(v) and rc.get_num_channels() == 3
    units = list(rc.get_property("physical_unit"))
    assert units[:2] == [side["recording"]["current_units"]] * 2, units
    gains = rc.get_property("gain_to_physical_unit")
    raw = rc.get_traces()
    dci = np.max(np.abs(raw[:, 0].astype(np.float64) * gains[0] - cmd))
    assert dci <= ibit / 2 + 1e-6, f"SpikeInterface: command differs by {dci}"
    out["spikeinterface"] = {
        "version": spikeinterface.__version__,
        "streams": list(names),
        "samples": int(r.get_num_samples()),
        "gain_to_uV": float(r.get_channel_gains()[0]),
        "v_max_abs_diff_mv": float(dsi),
        "command_max_abs_diff": float(dci),
        "controller_units": units,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
