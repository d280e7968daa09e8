"""``model_card.md``: what a bundle is, written from its own ``config.json`` so the two never disagree; and
``README.md``, the same card under the Hugging Face Hub's metadata header (:func:`render_hub_readme`).

Sections: the task and labels, the data it was trained on, the backbone and where its weights came from (and the
ranking that chose it), how it was trained, its scores with 95% intervals (and a warning when the test set is too
small to tell close models apart), the comparison with scratch (when the run measured it), and known limitations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _f(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}"


def render_model_card(config: dict[str, Any]) -> str:
    """Markdown for a bundle's ``config.json`` (classifier or detector)."""
    m = config.get("metrics") or {}
    data = m.get("data") or {}
    spec = config.get("backbone") or {}
    task = config.get("task", "")
    labels = config.get("labels") or []
    scored = "test" if m.get("test") else "val"
    s = m.get(scored) or {}
    lines = [f"# Model card: {task} on {spec.get('name', '?')}", ""]
    lines += ["## What it does", "",
              f"{task.replace('-', ' ').capitalize()} into {len(labels)} classes: {', '.join(map(str, labels[:20]))}"
              f"{' ...' if len(labels) > 20 else ''}."]
    if config.get("clinical", {}).get("positive"):
        c = config["clinical"]
        lines.append(f"Binary decision: **{c['positive']}** when its probability reaches {c['threshold']:.3f} "
                     f"({c.get('threshold_rule', 'as saved')}).")
    lines += ["", "## Data", ""]
    if data:
        lines.append(f"{data.get('train', '?')} training, {data.get('val', '?')} validation and {data.get('test', 0)} "
                     f"test examples (split: {data.get('split', '?')}).")
        if data.get("patients"):
            lines.append("Patients per split: " + ", ".join(f"{k} {v}" for k, v in data["patients"].items())
                         + "; no patient is in two splits.")
        if data.get("train_per_class"):
            lines.append("Training examples per class: " + ", ".join(f"{k} {v}" for k, v in
                                                                    data["train_per_class"].items()) + ".")
    else:
        lines.append("Not recorded (the bundle was saved without a run's metrics).")
    pre = config.get("preprocess") or {}
    size = pre.get("input_size")
    lines += ["", "## Backbone", "",
              f"`{spec.get('name')}` ({spec.get('source')}, architecture `{spec.get('arch')}`); pretrained weights: "
              f"{spec.get('weights') or 'none (random initialisation)'}."
              + (f" Input {size[0]}x{size[1]} px." if isinstance(size, list) and len(size) == 2 else "")]
    prov = (spec.get("extra") or {}).get("provenance") or {}
    if prov.get("method") and prov.get("data"):
        d, start = prov["data"], prov.get("start") or {}
        lines.append(f"The backbone was pre-trained with `transferkit pretrain` ({prov['method']}, "
                     f"{prov.get('total_steps', '?')} steps) on `{d.get('path')}`: {d.get('examples', '?')} examples"
                     + (f" in {len(d['classes'])} classes" if d.get("classes") else ", unlabelled")
                     + f", listing sha256 {str(d.get('listing_sha256', ''))[:12]}; it started from "
                     + (f"`{start['name']}`." if start.get("name") else f"`{start.get('arch')}` with random weights."))
    if m.get("backbone_ranking"):
        from ..evaluation.report import ranking_text

        lines.append(ranking_text(m["backbone_ranking"]).replace("**", ""))
    if m.get("search"):
        from ..evaluation.report import search_lines

        lines += ["", "## Hyperparameter search", "",
                  *[x.replace("**", "") for x in search_lines(m["search"]) if not x.startswith("![")]]
    lines += _lineage(config)
    lines += ["", "## Training", "", f"Strategy: {m.get('strategy', '?')}"
              + (f"; {m['trainable_params']:,} trainable parameters." if m.get("trainable_params") else ".")]
    gap = m.get("train_val_gap")
    if gap:
        what = "Training minus cross-validated score" if m.get("estimate") else "Train-validation gap at the kept epoch"
        lines.append(f"{what}: accuracy {gap['accuracy']:+.3f}, loss {gap['loss']:+.3f}.")
    if m.get("estimate"):
        from ..evaluation.report import estimate_text

        lines += ["", "## Scores (cross-validated estimate)" if scored == "val" else "## Scores (test set)", ""]
        lines += _scores(s)
        lines += ["", estimate_text(m["estimate"], scored == "test").replace("**", "")]
    else:
        lines += ["", f"## Scores ({scored} set)", ""]
        lines += _scores(s)
    lines += ["", "## Comparison with scratch", ""]
    if m.get("scratch_baseline"):
        from ..evaluation.report import scratch_text

        lines.append(scratch_text(m["scratch_baseline"]))
        if m.get("classical_baseline"):
            from ..evaluation.report import classical_text

            lines.append(classical_text(m["classical_baseline"]).replace("**", ""))
    elif str(m.get("strategy", "")).startswith("scratch"):
        lines.append("This model was itself trained from scratch.")
    elif "map_50" in s:  # detection: a second run is the comparison
        lines.append("Not measured for this bundle: train the same data with `--strategy scratch` and compare the "
                     "two mAP figures.")
    else:
        lines.append("Not measured for this bundle: `transferkit fit ... --scratch-baseline` trains the scratch "
                     "baseline on the same splits, and `transferkit compare` measures it over label budgets and seeds.")
    lines += ["", "## Known limitations", ""]
    lines += [f"- {x}" for x in _limitations(config, m, scored)]
    lines.append("")
    return "\n".join(lines)


def _num(v: Any) -> str:
    """A recorded figure as the card shows it; anything that is not a number is shown as plain text (a hand-edited
    lineage must not stop the card, nor write Markdown or HTML of its own into it)."""
    return f"{v:.3f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else _plain(v, 60)


def _plain(v: Any, limit: int = 200) -> str:
    """Recorded text as one line of plain text: no line breaks, backticks or angle brackets, at most ``limit``
    characters."""
    text = " ".join(str("?" if v is None else v).split())
    return text.translate({ord(c): " " for c in "`<>|"})[:limit]


def _lineage(config: dict[str, Any]) -> list[str]:
    """Where this model started when it was fine-tuned further (``fit --init-from``): each earlier bundle, newest
    first, with its data and scores as recorded."""
    chain = config.get("lineage")
    if not isinstance(chain, list) or not chain:
        return []
    lines = ["", "## Lineage", "", "This model was fine-tuned further from an earlier bundle (newest first):", ""]
    for i, e in enumerate(x for x in chain if isinstance(x, dict)):
        data = e.get("data") if isinstance(e.get("data"), dict) else {}
        scores = e.get("scores") if isinstance(e.get("scores"), dict) else {}
        shown = ", ".join(f"{k} {_num(v)}" for k, v in scores.items() if k != "on") if isinstance(scores, dict) else ""
        per_class = data.get("train_per_class")
        classes = e.get("classes") if isinstance(e.get("classes"), list) else []
        lines.append(f"{i + 1}. `{_plain(e.get('bundle'))}` (weights sha256 {_plain(e.get('weights_sha256'), 16)}, "
                     f"transferkit {_plain(e.get('transferkit_version'), 20)}): {_plain(e.get('strategy'), 40)} on "
                     f"`{_plain(e.get('backbone'), 100)}`, classes {_plain(', '.join(map(str, classes)), 300)}; "
                     f"{_plain(data.get('train'), 12)} training examples"
                     + (f" ({_plain(', '.join(f'{k} {v}' for k, v in per_class.items()), 300)})"
                        if isinstance(per_class, dict) else "")
                     + (f"; {shown} on {_plain(scores.get('on'), 20)}." if shown else "."))
    c = (config.get("metrics") or {}).get("continued") or {}
    f = c.get("forgetting")
    if isinstance(f, dict) and isinstance(f.get("before"), dict) and isinstance(f.get("after"), dict):
        key = f.get("metric", "accuracy")
        lines += ["", f"On the old test data given to this round (`{_plain(f.get('old_test'))}`, "
                      f"n={_plain(f.get('n'), 12)}): {_plain(key, 20)} {_num(f['before'].get(key))} before (the "
                      f"first bundle above), {_num(f['after'].get(key))} after this round."]
    return lines


def _scores(s: dict[str, Any]) -> list[str]:
    from ..evaluation.report import ci_text, small_test_warning, threshold_text

    if not s:
        return ["Not recorded."]
    out = []
    if "map_50" in s:  # detection
        out.append(f"mAP@[.5:.95] {_f(s.get('map'))}, mAP@.5 {_f(s.get('map_50'))} on {s.get('n_images')} images with "
                   f"{s.get('n_boxes')} boxes.")
        return out
    n = s.get("n", 0)
    if s.get("multi_label"):
        out.append(f"Micro-F1 {_f(s.get('micro_f1'))}{ci_text(s.get('micro_f1_ci'))}, macro-F1 "
                   f"{_f(s.get('macro_f1'))}, mAP {_f(s.get('map'))}, exact-match accuracy {_f(s.get('accuracy'))}, "
                   f"Hamming score {_f(s.get('hamming_score'))}, on {n} examples, at "
                   f"{threshold_text(s.get('threshold'))}.")
        return out
    out.append(f"Accuracy {_f(s.get('accuracy'))}{ci_text(s.get('accuracy_ci'))}, macro-F1 {_f(s.get('macro_f1'))}"
               f"{ci_text(s.get('macro_f1_ci'))}, on {n} examples.")
    c = s.get("clinical")
    if c and c.get("positive"):
        out.append(f"AUROC {_f(c.get('auroc'))}{ci_text(c.get('auroc_ci'))}; sensitivity {_f(c.get('sensitivity'))}"
                   f"{ci_text(c.get('sensitivity_ci'))}, specificity {_f(c.get('specificity'))}"
                   f"{ci_text(c.get('specificity_ci'))}.")
    warning = small_test_warning(s.get("accuracy_ci"), n)
    if warning:
        out.append(warning.strip())
    return out


def _limitations(config: dict[str, Any], m: dict[str, Any], scored: str) -> list[str]:
    out = []
    if scored == "val":
        out.append("No test set: the scores are on the validation set that also chose the checkpoint, so they are "
                   "optimistic.")
    data = m.get("data") or {}
    if data and data.get("train", 0) < 100:
        out.append(f"Trained on {data.get('train')} examples: expect it to miss kinds of input the training data lack.")
    base = m.get("scratch_baseline")
    if base and base.get("lead") is not None and base["lead"] <= 0:
        out.append(f"Transfer did not beat training from scratch here ({base['model_score']:.3f} vs "
                   f"{base['score']:.3f}): the pretrained features may not suit these data.")
    if config.get("clinical"):
        out.append("Not a medical device. The operating threshold and calibration were chosen on the validation set; "
                   "check them on data from the site and scanner where it will be used.")
    out.append("Scores hold for data like the test set (same source, same label definitions); they say nothing about "
               "other sources.")
    return out


# config.json "task" -> the Hugging Face Hub's pipeline tag and task name
HUB_TASKS = {"image-classification": "Image Classification", "text-classification": "Text Classification",
             "audio-classification": "Audio Classification", "object-detection": "Object Detection"}


def _hub_metrics(m: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """The split the scores come from and the scores, as model-index metrics (type, value, name)."""
    scored = "test" if m.get("test") else "val"
    s = m.get(scored) or {}
    estimate = scored == "val" and bool(m.get("estimate"))
    split = "test" if scored == "test" else ("train (cross-validated)" if estimate else "validation")
    out = []

    def add(kind: str, value: Any, name: str, **args: Any) -> None:
        if isinstance(value, (int, float)) and value == value:
            out.append({"type": kind, "value": round(float(value), 4), "name": f"{split} {name}",
                        **({"args": args} if args else {})})

    if "map_50" in s:  # detection
        add("map", s.get("map"), "mAP@[.5:.95]")
        add("map", s.get("map_50"), "mAP@.5", iou=0.5)
        return split, out
    add("accuracy", s.get("accuracy"), "exact-match accuracy" if s.get("multi_label") else "accuracy")
    add("f1", s.get("macro_f1"), "macro-F1", average="macro")
    if s.get("multi_label"):
        add("f1", s.get("micro_f1"), "micro-F1", average="micro")
        add("map", s.get("map"), "mAP")
    c = s.get("clinical") or {}
    add("roc_auc", c.get("auroc"), "AUROC")
    add("roc_auc", c.get("auroc_macro"), "macro AUROC", average="macro")
    add("balanced_accuracy", c.get("balanced_accuracy"), "balanced accuracy")
    return split, out


def render_hub_readme(config: dict[str, Any]) -> str:
    """``README.md`` of a bundle: the model card under the Hugging Face Hub's metadata header (library, pipeline tag,
    tags, base model, metrics and a ``model-index`` with the scores on the data set named by its folder; a local
    name is no hub dataset id, so ``datasets`` is left for the user to add), so the bundle folder is also a hub
    model repository (``huggingface-cli upload org/name runs/x/model``) that ``transferkit.load("org/name")``
    reads back."""
    import yaml

    task = str(config.get("task", ""))
    spec = config.get("backbone") or {}
    m = config.get("metrics") or {}
    dataset = config.get("dataset") or "own data"  # a folder's name: not a hub dataset id, so not in `datasets`
    tags = ["transferkit", "transfer-learning", *([m["strategy"]] if m.get("strategy") else []),
            *(["multi-label"] if config.get("multi_label") else []), *(["medical"] if config.get("clinical") else [])]
    header: dict[str, Any] = {"library_name": "transferkit", "pipeline_tag": task, "tags": tags}
    arch = str(spec.get("arch") or "")
    if spec.get("source") == "hf" and arch.count("/") == 1 and not arch.startswith((".", "/")):
        header["base_model"] = arch  # a Hugging Face Hub model id
    split, scores = _hub_metrics(m)
    if scores:
        header["metrics"] = sorted({s["type"] for s in scores})
        header["model-index"] = [{
            "name": f"{task} on {Path(str(spec.get('name', '?'))).name}",  # a backbone folder: not its path
            "results": [{"task": {"type": task, "name": HUB_TASKS.get(task, task)},
                         "dataset": {"name": dataset, "type": "custom", "split": split}, "metrics": scores}],
        }]
    front = yaml.safe_dump(header, sort_keys=False, allow_unicode=True, width=120)
    use = ["## Use", "", "```python", "import transferkit  # pip install transferkit", "",
           'model = transferkit.load("ORG/NAME")  # this repository\'s id, or the folder it was downloaded to',
           'model.predict(["example"])', "```", "",
           "`transferkit.load` reads `config.json` and `model.safetensors`: no pickle, no code from the repository.",
           ""]
    return f"---\n{front}---\n\n{render_model_card(config)}\n" + "\n".join(use)
