#!/usr/bin/env python3
"""Convert a neurostimd recording to NWB and check the NWB file against it.

    python3 scripts/check_nwb.py RECORDING_DIR OUT.nwb

Needs numpy, neo and pynwb (docs/recording.md, "Archiving in NWB").

Conversion (neo + pynwb): neo's OpenEphysBinaryRawIO reads the recording,
as any Open Ephys binary recording; pynwb writes
  - acquisition/V                TimeSeries, the raw int16 counts, unit "volts",
                                 conversion = bit_volts (mV) / 1000
  - acquisition/command, applied TimeSeries, int16 counts, the plant's current
                                 unit (e.g. "uA/cm2"), conversion = bit_volts
  - processing/neurostimd/forecast              the forecast channel (volts;
                                 -32768 counts = no forecast)
  - processing/neurostimd/forecasts             float32 [ticks, t_out], volts,
                                 timestamped at the sample each was made from
  - acquisition/TTL              the TTL edges (+line rising, -line falling)
with gzip-compressed datasets. Contiguous sample numbers become rate +
starting_time; a stream with gaps (lost samples on a serial rig) gets
per-sample timestamps from its sample_numbers.npy (stored once, the other
series on the same samples link to them). The sidecar goes into
the file's notes (JSON), the command line into session_description and
the start time from the sidecar into session_start_time.

Then it reads OUT.nwb back with pynwb and checks, per channel: the sample
count equals neo's and the sidecar's; the stored counts equal the
recording's int16 counts exactly; the values in the stated unit equal neo's
scaled values within half an int16 step (bit_volts / 2); the unit is stated
and is the recording's; the sample rate and start time equal neo's (or the
timestamps equal sample_numbers / rate); the TTL and forecast counts equal
the recording's; neo's counts equal continuous.dat read with numpy; the
file passes pynwb.validate (the NWB schema). Prints a JSON line of what it measured; exits 1 on any
mismatch.
"""
import datetime
import json
import os
import sys
import uuid

import numpy as np


BLOCK = 1 << 20


def fail(msg):
    print(f"check_nwb: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def main(rec, out):
    import neo
    import pynwb
    from hdmf.backends.hdf5.h5_utils import H5DataIO
    from neo.rawio import OpenEphysBinaryRawIO
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries

    side = json.load(open(os.path.join(rec, "neurostimd.json")))
    srec = side["recording"]
    base = os.path.join(rec, srec["path"])
    rate = float(srec["sample_rate_hz"])

    io = OpenEphysBinaryRawIO(dirname=rec)
    io.parse_header()
    sstreams = io.header["signal_streams"]
    chans = io.header["signal_channels"]

    # ------------------------------------------------------ read (neo)
    # Everything is compared in blocks of BLOCK samples, so memory does not
    # grow with the recording's length (neo maps continuous.dat; the NWB
    # datasets are read back block by block).
    channels = {}  # name -> dict(raw int16 column (mapped), unit, gain, rate, t_start, sample_numbers)
    for si, sname in enumerate(sstreams["name"]):
        sid = sstreams["id"][si]
        sch = chans[chans["stream_id"] == sid]
        raw = io.get_analogsignal_chunk(0, 0, stream_index=si)
        folder = sname.split("#")[-1]
        sn = np.load(os.path.join(base, "continuous", folder, "sample_numbers.npy"), mmap_mode="r")
        # the same counts straight from continuous.dat, without neo
        dat = np.memmap(os.path.join(base, "continuous", folder, "continuous.dat"), dtype="<i2", mode="r")
        dat = dat[: len(dat) // len(sch) * len(sch)].reshape(-1, len(sch))
        if dat.shape != raw.shape or any(not np.array_equal(dat[a:a + BLOCK], raw[a:a + BLOCK]) for a in range(0, len(raw), BLOCK)):
            fail(f"neo's counts for {folder} differ from continuous.dat")
        for ci, ch in enumerate(sch):
            channels[str(ch["name"])] = dict(
                raw=raw[:, ci], si=si, ci=ci, unit=str(ch["units"]), gain=float(ch["gain"]),
                offset=float(ch["offset"]), rate=float(io.get_signal_sampling_rate(si)),
                t_start=float(io.get_signal_t_start(0, 0, si)), sample_numbers=sn, stream=folder)
    for need in ("V", "command", "applied", "forecast"):
        if need not in channels:
            fail(f"neo found no channel {need!r} (channels: {list(channels)})")
    ttl_dir = os.path.join(base, "events", [d for d in os.listdir(os.path.join(base, "events"))][0], "TTL")
    ttl_states = np.load(os.path.join(ttl_dir, "states.npy"))
    ttl_sn = np.load(os.path.join(ttl_dir, "sample_numbers.npy"))
    fc = np.load(os.path.join(base, "forecasts", "forecasts.npy"))
    fc_sn = np.load(os.path.join(base, "forecasts", "sample_numbers.npy"))

    # ------------------------------------------------------ write (pynwb)
    start = datetime.datetime.fromtimestamp(float(side.get("started_unix_s", 0)), tz=datetime.timezone.utc)
    nwb = NWBFile(
        session_description="neurostimd closed-loop run: " + " ".join(side.get("command", []) if isinstance(side.get("command"), list) else [str(side.get("command", ""))]),
        identifier=str(uuid.uuid4()),
        session_start_time=start,
        experiment_description=f"neurostimd {side.get('neurostimd_version')} recording, plant {side.get('plant')}",
        notes=json.dumps(side),
        source_script="scripts/check_nwb.py (neo OpenEphysBinaryRawIO -> pynwb)",
        source_script_file_name="check_nwb.py",
    )
    written = {}
    stamped = []  # (sample_numbers, TimeSeries) already holding timestamps, to link to

    def series(name, ch, description):
        unit, conv = ch["unit"], ch["gain"]
        if unit == "mV":  # NWB's convention: SI volts, the int16 counts kept, conversion to volts
            unit, conv = "volts", conv / 1000.0
        sn = ch["sample_numbers"]
        contiguous = len(sn) < 2 or int(sn[-1]) - int(sn[0]) == len(sn) - 1 and all(
            bool(np.all(np.diff(sn[a:a + BLOCK + 1]) == 1)) for a in range(0, len(sn), BLOCK))
        if contiguous:
            kw = dict(rate=ch["rate"], starting_time=ch["t_start"])
        else:
            # per-sample timestamps once, linked from the other series on the same samples
            same = [t for sn2, t in stamped if np.array_equal(sn2, sn)]
            kw = dict(timestamps=same[0] if same else H5DataIO(sn / ch["rate"], compression="gzip"))
        written[name] = dict(unit=unit, conversion=conv, contiguous=contiguous)
        ts = TimeSeries(name=name, data=H5DataIO(ch["raw"], compression="gzip"), unit=unit, conversion=conv,
                          offset=ch["offset"], description=description, comments=f"Open Ephys stream {ch['stream']}, "
                          f"bit_volts {ch['gain']} {ch['unit']}", **kw)
        if not contiguous and not isinstance(kw["timestamps"], TimeSeries):
            stamped.append((sn, ts))
        return ts

    nwb.add_acquisition(series("V", channels["V"], "membrane potential as acquired from the plant"))
    nwb.add_acquisition(series("command", channels["command"], "stimulation the safety limiter let through, applied over the next sample"))
    nwb.add_acquisition(series("applied", channels["applied"], "current the plant reported as applied over this sample"))
    mod = nwb.create_processing_module("neurostimd", "the controller's forecasts")
    mod.add(series("forecast", channels["forecast"], "forecast for the end of this sample's model step; -32768 counts = no forecast"))
    dt_s = float(srec["forecast_dt_ms"]) / 1000.0
    mod.add(TimeSeries(name="forecasts", data=H5DataIO(fc, compression="gzip"), unit="volts", conversion=1e-3,
                       timestamps=fc_sn / rate, description=f"each planning tick's forecast, row r predicts V at "
                       f"timestamp + (j+1)*{dt_s} s for j = 0..{fc.shape[1] - 1 if fc.ndim == 2 else 0}"))
    nwb.add_acquisition(TimeSeries(name="TTL", data=ttl_states, unit="n/a", timestamps=ttl_sn / rate,
                                   description="TTL edges: +line rising, -line falling; lines: " + json.dumps(srec.get("event_lines", {}))))
    if len(ttl_sn) == 0:
        nwb.acquisition.pop("TTL")
    with NWBHDF5IO(out, "w") as w:
        w.write(nwb)

    # ------------------------------------------------------ read back and check
    n_side = side["counts"]["samples"]
    res = {"recording": rec, "nwb": out, "nwb_bytes": os.path.getsize(out), "pynwb": pynwb.__version__,
           "neo": neo.__version__, "samples": n_side, "rate_hz": rate, "channels": {}}
    with NWBHDF5IO(out, "r") as r:
        f = r.read()
        for name in ("V", "command", "applied", "forecast"):
            ts = f.acquisition[name] if name != "forecast" else f.processing["neurostimd"]["forecast"]
            ch = channels[name]
            data = ts.data  # h5py dataset, read in blocks
            n = data.shape[0]
            if n != len(ch["raw"]) or n != n_side:
                fail(f"{name}: NWB has {n} samples, neo {len(ch['raw'])}, the sidecar {n_side}")
            if data.dtype != np.int16:
                fail(f"{name}: stored as {data.dtype}, not the recording's int16 counts")
            if not ts.unit:
                fail(f"{name}: no unit")
            to_unit = 1.0
            if ts.unit == "volts" and ch["unit"] == "mV":
                to_unit = 1000.0
            elif ts.unit != ch["unit"]:
                fail(f"{name}: unit {ts.unit!r}, the recording's {ch['unit']!r}")
            d = 0.0
            stamps = None if ts.rate is not None else ts.timestamps
            for a in range(0, n, BLOCK):
                blk = data[a:a + BLOCK]
                if not np.array_equal(blk, ch["raw"][a:a + BLOCK]):
                    fail(f"{name}: stored counts differ from the recording's int16 counts (block at {a})")
                vals = (blk.astype("float64") * ts.conversion + ts.offset) * to_unit
                neo_vals = io.rescale_signal_raw_to_float(
                    io.get_analogsignal_chunk(0, 0, i_start=a, i_stop=a + len(blk), stream_index=ch["si"]),
                    dtype="float64", stream_index=ch["si"])[:, ch["ci"]]
                d = max(d, float(np.max(np.abs(vals - neo_vals))))
                if stamps is not None and not np.allclose(stamps[a:a + BLOCK], ch["sample_numbers"][a:a + BLOCK] / rate, rtol=0, atol=1e-9):
                    fail(f"{name}: timestamps differ from sample_numbers / rate (block at {a})")
            if d > ch["gain"] / 2 + 1e-12:
                fail(f"{name}: values differ from neo's by {d} {ch['unit']} (half a step is {ch['gain'] / 2})")
            if ts.rate is not None:
                if ts.rate != ch["rate"] or ts.starting_time != ch["t_start"]:
                    fail(f"{name}: rate {ts.rate} / start {ts.starting_time}, neo {ch['rate']} / {ch['t_start']}")
                if ts.rate != rate:
                    fail(f"{name}: rate {ts.rate}, the sidecar {rate}")
            elif len(stamps) != n:
                fail(f"{name}: {len(stamps)} timestamps for {n} samples")
            res["channels"][name] = {"unit": ts.unit, "conversion": ts.conversion, "recording_unit": ch["unit"],
                                     "bit_volts": ch["gain"], "samples": int(n),
                                     "max_abs_diff": d, "rate_hz": ts.rate,
                                     "timing": "rate+starting_time" if ts.rate is not None else "timestamps"}
        fr = f.processing["neurostimd"]["forecasts"]
        if fr.data.shape != fc.shape or not np.array_equal(fr.data[:], fc):
            fail(f"forecasts: NWB {fr.data.shape}, recording {fc.shape}")
        n_ttl = len(f.acquisition["TTL"].data) if "TTL" in f.acquisition else 0
        if n_ttl != len(ttl_states) or (n_ttl and not np.array_equal(f.acquisition["TTL"].data[:], ttl_states)):
            fail(f"TTL: NWB has {n_ttl} edges, the recording {len(ttl_states)}")
        if json.loads(f.notes).get("counts", {}).get("samples") != n_side:
            fail("the sidecar in notes does not round-trip")
        res["forecasts"] = list(fc.shape)
        res["ttl_edges"] = n_ttl
    # the file against the NWB schema
    from pynwb import validate

    errors = validate(path=out)
    errors = errors[0] if isinstance(errors, tuple) else errors
    if errors:
        fail(f"pynwb.validate: {errors[:5]}")
    res["schema_valid"] = True
    res["ok"] = True
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
