"""Predict with a transferkit text classifier exported to ONNX: onnxruntime, numpy and tokenizers only.

    python predict.py EXPORTED_FOLDER "first text" ["second text" ...]
    python predict.py EXPORTED_FOLDER --lines texts.txt         # one text per line, as transferkit predict --lines

One JSON line per text: the label, its probability and every class's probability.
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


def encode(texts, folder, pre):
    """Token ids and attention mask as in training: the texts cut to 64 characters a token allowed, tokenised with
    the model's own tokenizer, truncated at ``max_length`` tokens, padded to the longest."""
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_truncation(pre["max_length"])
    tokenizer.enable_padding(pad_id=pre["pad_id"], pad_token=pre["pad_token"])
    enc = tokenizer.encode_batch([t[: 64 * pre["max_length"]] for t in texts])
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    return {"input_ids": ids, "attention_mask": mask}


def main(folder, texts):
    folder = Path(folder)
    pre = json.loads((folder / "preprocessing.json").read_text())
    labels = json.loads((folder / "labels.json").read_text())
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    probs = session.run(["probabilities"], encode(texts, folder, pre))[0]
    for text, p in zip(texts, probs, strict=True):
        row = {"input": text[:80]}
        if pre.get("multi_label"):
            cut = np.broadcast_to(np.asarray(pre["threshold"], dtype=float), p.shape)  # per label, or one for all
            row["labels"] = [labels[i] for i in np.argsort(-p) if p[i] >= cut[i]]
        else:
            k = int(p.argmax())
            row |= {"label": labels[k], "probability": float(p[k])}
        row["probabilities"] = {label: float(q) for label, q in zip(labels, p, strict=True)}
        print(json.dumps(row))


if __name__ == "__main__":
    args = sys.argv[2:]
    if args[:1] == ["--lines"] and len(args) == 2:
        args = [line for line in Path(args[1]).read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(sys.argv) < 2 or not args or args[0] == "--lines":
        sys.exit('usage: python predict.py EXPORTED_FOLDER "a text" ["another" ...] | --lines FILE')
    main(sys.argv[1], args)
