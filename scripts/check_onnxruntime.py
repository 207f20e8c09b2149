#!/usr/bin/env python3
"""Load neurostimd-exported models with onnxruntime and check them against
their bundles: NAME.input.npy through onnxruntime must reproduce
NAME.expected.npy (written from tract) within 1e-4, and the card's sha256
must match the file.

    python3 scripts/check_onnxruntime.py MODEL.onnx [MODEL.onnx ...]

Exit status 0 when every model passes. Used by .ci/run (in a venv under
target/) so CI proves our ONNX writer's output loads in a second runtime.
"""
import hashlib
import json
import sys

import numpy as np
import onnxruntime as ort


def check(path):
    base = path[: -len(".onnx")]
    card = json.load(open(base + ".json"))
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert digest == card["onnx_sha256"], f"{path}: sha256 {digest} != card {card['onnx_sha256']}"
    x = np.load(base + ".input.npy")
    want = np.load(base + ".expected.npy")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {card["input"]["name"]: x})
    assert y.shape == want.shape, f"{path}: onnxruntime shape {y.shape} != {want.shape}"
    diff = float(np.max(np.abs(y - want)))
    assert diff < 1e-4, f"{path}: onnxruntime differs from the bundle by {diff}"
    print(f"{path}: onnxruntime {ort.__version__} loads it; max |ort - bundle| = {diff:.2e} over {x.shape[0]} rows")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for p in sys.argv[1:]:
        check(p)
