#!/usr/bin/env python3
"""Import a real current-clamp recording (any format python-neo reads: ABF,
NWB, Spike2, Axon, ...) as the trace CSV that `neurostimd calibrate --data`,
`neurostimd train` (train.data.traces) and `neurostimd model eval --data`
read:

    t_ms,V_mV,I_stim_uA_cm2,sweep

- V is the chosen voltage channel, converted to mV.
- The injected current is the recorded current channel (--current-channel)
  or, for ABF files, the command waveform neo rebuilds from the protocol
  (`AxonIO.read_raw_protocol`), converted to pA and then to a current
  density: I [uA/cm2] = I [pA] * 1e-6 / area [cm2]. Give the area
  directly (--area-um2) or through the capacitance (--capacitance-pf with
  --specific-capacitance, default 1 uF/cm2: area = C / c_m, so that with
  c_m = 1, I [uA/cm2] = I [pA] / C [pF]). The simulator's currents are
  densities, so the model only compares across cells when the scale is
  right; the figure used is written into the sidecar JSON.
- Row k's current is the one applied from t_k to t_k+1 (as the daemon's
  traces: `simulate --trace-out`), so the importer pairs each voltage sample
  with the command value at that sample.
- Sweeps are concatenated in time order; the `sweep` column numbers them so
  that the readers cut windows within a sweep only (a window never
  straddles the gap between two sweeps; src/train/segments.rs).
- --decimate N averages the current over blocks of N samples and keeps the
  voltage at each block's end (the forecaster's convention), so a 20 kHz
  file becomes a 2 kHz trace of a tenth the size, with the same model-step
  data for any model step that is a multiple of the new period.

A sidecar FILE.csv.json records the source, channels, sweeps, units and the
scale.

Examples:
  python3 scripts/import_recording.py data.abf --capacitance-pf 100 \\
      --decimate 10 --out trace.csv
  python3 scripts/import_recording.py cell.nwb --voltage-channel 0 \\
      --current-channel 1 --area-um2 20000 --sweeps 0-9 --out trace.csv

Needs python-neo and numpy (e.g. the venv target/oe-venv).
"""
import argparse
import json
import sys

import numpy as np


def parse_sweeps(text, n):
    """'0-9,12' -> [0..9, 12]; None -> all."""
    if not text:
        return list(range(n))
    out = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-", 1)
            out.extend(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    bad = [k for k in out if not 0 <= k < n]
    if bad:
        sys.exit(f"--sweeps: {bad} not in 0..{n - 1} (the file has {n} sweeps)")
    return out


def to_unit(signal, unit, what):
    """A neo/quantities signal as a float array in `unit`."""
    try:
        return np.asarray(signal.rescale(unit).magnitude, dtype=np.float64).ravel()
    except Exception as e:  # quantities raises ValueError for mismatched dimensions
        sys.exit(f"{what}: cannot convert {signal.units.dimensionality} to {unit}: {e}")


def area_cm2(args):
    if args.area_um2 is not None:
        if args.area_um2 <= 0:
            sys.exit("--area-um2 must be > 0")
        return args.area_um2 * 1e-8, f"area {args.area_um2} um2 (given)"
    if args.capacitance_pf is not None:
        if args.capacitance_pf <= 0 or args.specific_capacitance <= 0:
            sys.exit("--capacitance-pf and --specific-capacitance must be > 0")
        area = args.capacitance_pf * 1e-12 / (args.specific_capacitance * 1e-6)
        return area, (f"area {area * 1e8:.0f} um2 from C = {args.capacitance_pf} pF "
                      f"and c_m = {args.specific_capacitance} uF/cm2")
    sys.exit("give the membrane area (--area-um2) or capacitance (--capacitance-pf): "
             "the current must be scaled to uA/cm2")


def read_sweeps(args):
    """[(t0_s, rate_hz, V_mV array, I_pA array, unit note)] per sweep."""
    import neo
    import quantities as pq

    io = neo.io.get_io(args.recording)
    block = io.read_block(signal_group_mode="split-all")
    segs = block.segments
    chosen = parse_sweeps(args.sweeps, len(segs))
    protocol = None
    if args.current_channel is None:
        if not hasattr(io, "read_raw_protocol"):
            sys.exit(f"{type(io).__name__} has no protocol: name the recorded current "
                     "channel with --current-channel")
        waves, names, units = io.read_raw_protocol()
        ch = args.command_channel
        protocol = ([np.asarray(w[ch], dtype=np.float64).ravel() for w in waves], names[ch], units[ch])
    out = []
    for k in chosen:
        sigs = segs[k].analogsignals
        if args.voltage_channel >= len(sigs):
            sys.exit(f"--voltage-channel {args.voltage_channel}: sweep {k} has {len(sigs)} channels")
        vsig = sigs[args.voltage_channel]
        v = to_unit(vsig, pq.mV, "voltage channel")
        if protocol is not None:
            waves, name, unit = protocol
            i = waves[k][: len(v)] * float(pq.Quantity(1.0, unit).rescale(pq.pA).magnitude)
            note = f"command waveform '{name}' from the protocol ({unit})"
        else:
            isig = sigs[args.current_channel]
            i = to_unit(isig, pq.pA, "current channel")
            note = f"recorded channel {args.current_channel} '{isig.name}' ({isig.units.dimensionality})"
        n = min(len(v), len(i))
        out.append((float(vsig.t_start.rescale(pq.s).magnitude), float(vsig.sampling_rate.rescale(pq.Hz).magnitude),
                    v[:n], i[:n], note, k))
    return out


def decimate(v, i, n):
    """Blocks of n samples (k n, (k+1) n]: V at each block's end; I over
    (t_row, t_next_row]: the mean of the commands from the row's sample up
    to the next row's (the forecaster's convention)."""
    if n == 1:
        return np.arange(len(v)), v, i
    blocks = (len(v) - 1) // n
    ends = (np.arange(blocks) + 1) * n
    i_out = np.array([i[e:e + n].mean() for e in ends])
    return ends, v[ends], i_out


def time_decimals(times):
    """Fewest decimals (up to 6) that write every time exactly."""
    for d in range(7):
        x = np.asarray(times) * 10 ** d
        if np.all(np.abs(np.round(x) - x) < 1e-6 * max(1, 10 ** (d - 3))):
            return d
    return 6


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recording", help="file neo reads (ABF, NWB, SMR, ...)")
    ap.add_argument("--out", required=True, help="trace CSV to write")
    ap.add_argument("--voltage-channel", type=int, default=0)
    ap.add_argument("--current-channel", type=int, default=None,
                    help="recorded injected-current channel; default (ABF): the protocol's command")
    ap.add_argument("--command-channel", type=int, default=0,
                    help="protocol DAC channel (ABF, without --current-channel)")
    ap.add_argument("--sweeps", default=None, help="e.g. 0-9,12 (default: all)")
    ap.add_argument("--area-um2", type=float, default=None, help="membrane area, um2")
    ap.add_argument("--capacitance-pf", type=float, default=None, help="membrane capacitance, pF")
    ap.add_argument("--specific-capacitance", type=float, default=1.0,
                    help="uF/cm2, with --capacitance-pf (default 1)")
    ap.add_argument("--decimate", type=int, default=1, help="keep one row per N samples")
    args = ap.parse_args()
    if args.decimate < 1:
        sys.exit("--decimate must be >= 1")
    area, area_note = area_cm2(args)
    sweeps = read_sweeps(args)
    rows = []
    rate0 = sweeps[0][1]
    period_ms = 1000.0 * args.decimate / rate0
    last_end = -np.inf
    for t0, rate, v, i_pa, note, k in sweeps:
        if abs(rate - rate0) > 1e-6 * rate0:
            sys.exit(f"sweep {k} is sampled at {rate} Hz, the first at {rate0} Hz")
        i = i_pa * 1e-6 / area  # pA -> uA, per cm2
        idx, v, i = decimate(v, i, args.decimate)
        t = 1000.0 * t0 + idx * (1000.0 / rate)
        if t[0] <= last_end:
            t = t + (last_end - t[0]) + period_ms  # overlapping clocks: keep time increasing
        last_end = t[-1]
        rows.append((t, v, i, k))
    td = max(time_decimals(t) for t, _, _, _ in rows)
    with open(args.out, "w") as f:
        f.write("t_ms,V_mV,I_stim_uA_cm2,sweep\n")
        for t, v, i, k in rows:
            for a, b, c in zip(t, v, i):
                f.write(f"{a:.{td}f},{b:.2f},{c:.5g},{k}\n")
    side = {
        "source": args.recording,
        "format": "t_ms,V_mV,I_stim_uA_cm2,sweep (rows of one sweep are contiguous; sweeps in time order)",
        "sweeps": [k for _, _, _, k in rows],
        "sample_rate_hz": rate0 / args.decimate,
        "decimate": args.decimate,
        "voltage": f"channel {args.voltage_channel}, mV",
        "current": sweeps[0][4] + ", converted to pA, then to uA/cm2",
        "current_scale": f"I[uA/cm2] = I[pA] * 1e-6 / {area:.4g} cm2 ({area_note})",
        "samples": int(sum(len(t) for t, _, _, _ in rows)),
    }
    with open(args.out + ".json", "w") as f:
        json.dump(side, f, indent=2)
        f.write("\n")
    total_s = side["samples"] / side["sample_rate_hz"]
    imax = max(float(np.abs(i).max()) for _, _, i, _ in rows)
    print(f"wrote {args.out}: {len(rows)} sweeps, {side['samples']} rows ({total_s:.1f} s at "
          f"{side['sample_rate_hz']:.0f} Hz); |I| <= {imax:.3g} uA/cm2 ({area_note})")


if __name__ == "__main__":
    main()
