"""Predict with a transferkit audio classifier exported to ONNX: onnxruntime, numpy, soundfile and scipy only.

    python predict.py EXPORTED_FOLDER clip.wav [more recordings ...]

One JSON line per recording: the label, its probability, every class's probability and how many windows of the
recording were averaged. The spectrogram is in the graph; reading, resampling, trimming, levelling and cutting into
windows happen here, as in training.
"""

import json
import sys
from math import gcd
from pathlib import Path

import numpy as np
import onnxruntime as ort
import soundfile as sf

FLOAT16_MAX = 65504.0
CHUNK = 32  # windows run together: a long recording runs in parts of this many
MIN_RATE, MAX_RATE = 100, 768_000  # the sample rates a recorder makes, as transferkit accepts them


def read(path, pre):
    """The recording as the model heard it in training: channels averaged, resampled to ``sample_rate``
    (polyphase), leading and trailing audio ``trim_db`` below the loudest 10 ms cut, a quiet recording raised to
    ``target_dbfs`` (a silent one, peak under -60 dBFS, left as it is), and kept as float16, as transferkit keeps it."""
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    if not MIN_RATE <= rate <= MAX_RATE:  # 1 Hz resampled to 16 kHz: a 30 kB file would take gigabytes
        raise ValueError(f"it declares a sample rate of {rate} Hz, outside {MIN_RATE:,} to {MAX_RATE:,} Hz")
    if len(data) == 0:
        raise ValueError("no samples")
    if not np.isfinite(data).all():  # one such sample would make every probability NaN
        raise ValueError("it holds NaN or infinite samples")
    x = data.mean(axis=1)
    target = pre["sample_rate"]
    if rate != target:
        from scipy.signal import resample_poly

        g = gcd(int(rate), int(target))
        x = resample_poly(x, target // g, rate // g).astype(np.float32)
    if np.max(np.abs(x)) >= 10 ** (-60 / 20):  # not silent
        if pre.get("trim_db") is not None:
            x = trim(x, pre["trim_db"], max(1, target // 100))
        if pre.get("target_dbfs") is not None:
            x = louder(x, pre["target_dbfs"])
    return np.clip(x, -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16).astype(np.float32)


def trim(x, below_peak_db, frame):
    """Cut leading and trailing frames quieter than ``below_peak_db`` under the loudest frame."""
    if len(x) < 2 * frame:
        return x
    n = len(x) // frame
    energy = np.sqrt(np.mean(np.square(x[: n * frame].reshape(n, frame), dtype=np.float64), axis=1))
    loud = np.flatnonzero(energy > energy.max() * 10 ** (-below_peak_db / 20))
    if len(loud) == 0:
        return x
    return x[loud[0] * frame : min(len(x), (loud[-1] + 1) * frame)]


def louder(x, target_dbfs):
    """Raise a quiet recording's RMS level to ``target_dbfs`` (a loud one is never lowered)."""
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    gain_db = target_dbfs - 20 * np.log10(rms) if rms > 0 else 0.0
    return x if gain_db <= 0 else (x * 10 ** (gain_db / 20)).astype(np.float32)


def windows(x, n):
    """Windows of ``n`` samples every ``n // 2``: one (zero-padded) for a recording no longer than a window, and
    one more at the end, zero-padded, when the last samples would be left out."""
    if len(x) <= n:
        return np.pad(x, (0, n - len(x)))[None]
    hop = max(1, n // 2)
    starts = list(range(0, len(x) - n + 1, hop))
    if starts[-1] + n < len(x):
        starts.append(starts[-1] + hop)
    return np.stack([np.pad(x[s : s + n], (0, max(0, s + n - len(x)))) for s in starts])


def probabilities(session, x, pre, chunk=CHUNK):
    """One recording's class probabilities and its number of windows."""
    w = windows(x, int(round(pre["clip_seconds"] * pre["sample_rate"])))
    return averaged(session, w, pre, chunk), len(w)


def averaged(session, w, pre, chunk=CHUNK):
    """The class probabilities of one recording's windows ``w``. The graph averages the windows' logits and turns
    the average into probabilities; more than ``chunk`` windows run in parts (memory stays bounded), whose average
    logits (the graph's second output), weighted by their windows, are the recording's."""
    w = np.asarray(w, dtype=np.float32)
    if len(w) <= chunk:
        averaging = np.full((1, len(w)), 1.0 / len(w), dtype=np.float32)
        return session.run(["probabilities"], {"waves": w, "averaging": averaging})[0][0]
    total = 0.0
    for start in range(0, len(w), chunk):
        part = w[start : start + chunk]
        averaging = np.full((1, len(part)), 1.0 / len(part), dtype=np.float32)
        total = total + session.run(["logits"], {"waves": part, "averaging": averaging})[0][0].astype(np.float64) \
            * len(part)
    mean = total / len(w)
    if pre.get("multi_label"):
        return (1 / (1 + np.exp(-mean))).astype(np.float32)
    e = np.exp(mean - mean.max())
    return (e / e.sum()).astype(np.float32)


def main(folder, paths):
    folder = Path(folder)
    pre = json.loads((folder / "preprocessing.json").read_text())
    labels = json.loads((folder / "labels.json").read_text())
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    for path in paths:  # one recording at a time: a long one can be thousands of windows
        try:
            x = read(path, pre)
        except (OSError, ValueError, RuntimeError) as err:  # not audio, truncated, missing: say so, go on
            print(json.dumps({"input": str(path), "error": f"not a readable recording ({err})"}))
            continue
        p, count = probabilities(session, x, pre)
        row = {"input": str(path)}
        if pre.get("multi_label"):
            cut = np.broadcast_to(np.asarray(pre["threshold"], dtype=float), p.shape)  # per label, or one for all
            row["labels"] = [labels[i] for i in np.argsort(-p) if p[i] >= cut[i]]
        else:
            k = int(p.argmax())
            row |= {"label": labels[k], "probability": float(p[k])}
        row["probabilities"] = {label: float(q) for label, q in zip(labels, p, strict=True)}
        row["windows"] = count
        print(json.dumps(row))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python predict.py EXPORTED_FOLDER recording [recording ...]")
    main(sys.argv[1], sys.argv[2:])
