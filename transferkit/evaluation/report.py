"""metrics.json, plots and report.md for a run; every file written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io import atomic_write_text, write_json
from .plots import confusion_matrix_png, learning_curve_png


METRIC_NAMES = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "micro_f1": "micro-F1",
                "macro_f1": "macro-F1", "map": "mAP", "auroc": "AUROC"}


def threshold_text(threshold: Any) -> str:
    """A multi-label model's cut in words: one probability, or the range of the per-label ones (anything else, as
    a tampered bundle's card may hold: "the saved thresholds")."""
    from ..errors import is_finite_number

    if isinstance(threshold, list) and threshold and all(is_finite_number(t) for t in threshold):
        if min(threshold) == max(threshold):
            return f"threshold {float(threshold[0]):g} for every label"
        return f"per-label thresholds {min(threshold):.2f}-{max(threshold):.2f}"
    if is_finite_number(threshold):
        return f"threshold {float(threshold):g}"
    return "threshold 0.5" if threshold is None else "the saved thresholds"


def fmt(value: Any) -> str:
    """A score with three decimals, or "n/a" where it is undefined (mAP of a set without both values)."""
    return "n/a" if value is None else f"{value:.3f}"


def label_lines(m: dict[str, Any], s: dict[str, Any]) -> list[str]:
    """How classes were balanced and, for multi-label runs, where each label's threshold came from."""
    out = []
    b = m.get("balance") or {}
    if b.get("balance") not in (None, "none"):
        how = {"weights": "a class-weighted loss", "sampler": "balanced sampling (classes drawn equally often)"}
        why = f" ({b['why']})" if b.get("why") else ""
        out.append(f"Class balance: {how.get(b['balance'], b['balance'])}{why}; epochs and models chosen by "
                   f"{'mAP' if s.get('multi_label') else 'balanced accuracy'}. The classes below are listed by "
                   "recall, the worst first.")
    t = m.get("thresholds")
    if t:
        if t.get("tuned_on"):
            out.append(f"Each label's threshold maximises its F1 on the {t['tuned_on']} "
                       f"({threshold_text(list(t['per_label'].values()))}); scores on that same set lean optimistic.")
        else:
            out.append(f"One threshold for every label: {t['rule']:g}.")
    return [*out, ""] if out else []


def per_class_table(s: dict[str, Any], balanced: bool) -> list[str]:
    """Per-class precision, recall, F1 and support (multi-label: AP, AUROC and the label's threshold too); a balanced
    run shows recall first, the worst-recalled class on top."""
    rows = list(s["per_class"].items())
    cuts = s.get("threshold")
    cuts = cuts if isinstance(cuts, list) and len(cuts) == len(rows) else [cuts] * len(rows)
    if balanced:  # the worst-recalled class on top
        order = sorted(range(len(rows)), key=lambda i: (rows[i][1]["recall"], rows[i][0]))
        rows, cuts = [rows[i] for i in order], [cuts[i] for i in order]
    if s.get("multi_label"):
        head = ["| class | precision | recall | F1 | AP | AUROC | threshold | support |",
                "|---|---|---|---|---|---|---|---|"]
        return head + [f"| {c} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {fmt(v.get('ap'))} | "
                       f"{fmt(v.get('auroc'))} | {fmt(t)} | {v['support']} |"
                       for (c, v), t in zip(rows, cuts, strict=True)]
    if balanced:
        return ["| class | recall | precision | F1 | support |", "|---|---|---|---|---|",
                *[f"| {c} | {v['recall']:.3f} | {v['precision']:.3f} | {v['f1']:.3f} | {v['support']} |"
                  for c, v in rows]]
    return ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|",
            *[f"| {c} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |" for c, v in rows]]


def tta_text(t: dict[str, Any]) -> str:
    """Whether test-time augmentation was kept, and the scores that decided it."""
    if not t.get("judged"):
        return ("Test-time augmentation: not judged (no validation split to judge it on); off. `transferkit evaluate "
                "MODEL TEST --tta` shows whether it helps on a test set.")
    name = METRIC_NAMES.get(t["metric"], t["metric"])
    parts = [f"{s} {t[s]['without']:.3f} without, {t[s]['with']:.3f} with" for s in ("val", "test") if s in t]
    verdict = "kept: predictions average them" if t["kept"] else "not kept: it did not help on validation"
    return f"Test-time augmentation ({t['views']} extra views): {name} {'; '.join(parts)}; {verdict}."


def noise_lines(n: dict[str, Any]) -> list[str]:
    """The label-noise check: how many training examples confident learning flags, and the first of them."""
    if not n.get("checked"):
        return [f"Not checked: the label-noise check {n.get('why', 'needs out-of-fold predictions')}."]
    head = (f"Confident learning on the out-of-fold probabilities flags {n['issues']} of {n['examples']} training "
            f"examples ({n['share']:.1%}) whose label the other examples contradict: worth a second look (a hard or "
            "ambiguous example is flagged as readily as a wrong one).")
    if not n["rows"]:
        return [head]

    def names(v: Any) -> str:
        return ", ".join(map(str, v)) or "(none)" if isinstance(v, list) else str(v)

    return [head, "", "| example | given | suggested | probability of the given label |", "|---|---|---|---|",
            *[f"| {r['input']} | {names(r['given'])} | {names(r['suggested'])} | {r['self_confidence']:.3f} |"
              for r in n["rows"]]]


def train_val_gap(history: dict[str, Any], held_out: dict[str, Any] | None = None,
                  balanced: bool = False) -> dict[str, float]:
    """Gap at the kept (best) epoch: train minus validation accuracy, and validation minus train loss.

    ``held_out``: the scores that stand for validation when there was none (a cross-validated estimate's
    ``accuracy``, ``balanced_accuracy`` for a ``balanced`` run, or ``map`` for multi-label, and ``log_loss``): the
    score the history records. Training metrics are measured on augmented
    batches while the weights move, so the gap is a guide to overfitting, not an exact measure.
    """
    best = history["epochs"][history["best_epoch"]]
    if held_out is not None:
        acc = held_out["map"] if held_out.get("multi_label") else \
            held_out["balanced_accuracy"] if balanced and "balanced_accuracy" in held_out else held_out["accuracy"]
        acc = float("nan") if acc is None else acc  # mAP of a set where no label is both present and absent
        return {"accuracy": best["train_acc"] - acc, "loss": held_out["log_loss"] - best["train_loss"]}
    return {"accuracy": best["train_acc"] - best["val_acc"], "loss": best["val_loss"] - best["train_loss"]}


def estimate_text(e: dict[str, Any], test_given: bool) -> str:
    """What a cross-validated estimate is, in words a reader can act on."""
    what = METRIC_NAMES.get(e["metric"], "accuracy")
    repeats = f" x {e['repeats']} repeats" if e["repeats"] > 1 else ""
    text = (f"No validation split was held out: the {what} {e['score']:.3f}{ci_text(e.get('score_ci'))} is a "
            f"**cross-validated estimate** ({e['folds']} stratified folds{repeats}: every one of the {e['n']} labelled "
            f"examples was scored by a model that did not train on it; {e['method']}). Fold scores "
            f"{e['fold_mean']:.3f} +- {e['fold_std']:.3f}. The final model trained on all {e['n']} examples with the "
            "settings the folds chose "
            f"({', '.join(f'{k} {v}' for k, v in e['chosen'].items() if not isinstance(v, list))}).")
    if not test_given:
        text += (" No test set was given: `transferkit evaluate MODEL TEST-DATA` on examples kept apart from the start "
                 "is the final word.")
    return text


def ranking_text(r: dict[str, Any]) -> str:
    """One sentence: which backbone was chosen, and the LogME of each candidate."""
    rows = sorted(r["rows"], key=lambda x: -x["logme"])
    scores = ", ".join(f"{x['backbone']} {x['logme']:.3f}" for x in rows)
    return (f"Backbone chosen by ranking: **{r['chosen']}** ranked first of {len(rows)} by LogME on the training and "
            f"validation data ({scores}).")


def scratch_text(b: dict[str, Any]) -> str:
    """The scratch baseline on the same splits, training time and scored set, against the model."""
    name = METRIC_NAMES.get(b["metric"], b["metric"])
    if b.get("lead") is None:
        return f"The scratch baseline's {name} could not be computed on the {b['set']} set."
    lead = b["lead"]
    verdict = "better than" if lead > 0 else "worse than" if lead < 0 else "as good as"
    text = (f"The same architecture trained from random weights on the same splits and training time scored {name} "
            f"{b['score']:.3f}{ci_text(b.get('score_ci'))} on the {b['set']} set ({b['epochs']} epochs, "
            f"{b['seconds']:.0f} s; train-validation gap {b['train_val_gap']:+.3f}). This model, "
            f"{b['model_score']:.3f}, is {abs(lead):.3f} {verdict} scratch")
    if b.get("resolved") is False:
        return text + (f", less than the test set's 95% interval (+-{b['half_width']:.3f}): this test set cannot "
                       "tell them apart.")
    return text + "."


def classical_text(b: dict[str, Any]) -> str:
    """The classical baseline against the model, saying plainly when it wins."""
    name = METRIC_NAMES.get(b["metric"], b["metric"])
    if b.get("lead") is None:
        return f"The classical baseline's {name} could not be computed on the {b['set']} set."
    where = "cross-validated on the training examples" if b["set"] == "cross-validated" else f"on the {b['set']} set"
    text = (f"A classical baseline, {b['name']}, scored {name} {b['score']:.3f}{ci_text(b.get('score_ci'))} {where} "
            f"({b.get('seconds', 0):.0f} s).")
    unresolved = b.get("resolved") is False
    if b["wins"]:
        text = (f"**The classical baseline beats this model**: {b['name']} scored {name} {b['score']:.3f} against "
                f"{b['model_score']:.3f}, {where}. ") + (
            f"The difference is within the 95% interval (+-{b['half_width']:.3f}), so it is not shown to be better, "
            "but transfer did not pay off here." if unresolved else
            "Consider it, or more labels, before trusting the pretrained features for this task.")
        return text
    return text + f" This model is {b['lead']:.3f} better" + (
        f", less than the 95% interval (+-{b['half_width']:.3f}): not shown to be better." if unresolved else ".")


def budget_text(plan: dict, total: float) -> str:
    """The budget and how it was split (see :mod:`transferkit.tasks.budget`), and what the run used of it."""
    scratch = f", scratch baseline {plan['scratch_s']:.0f} s" if plan.get("scratch_s") else ""
    return (f"- Budget: {plan['requested_s']:.0f} s for the whole run, used {total:.0f} s before writing the report "
            f"(split: reading {plan['spent_s']:.0f} s, training {plan['train_s']:.0f} s{scratch}, scoring "
            f"~{plan['scoring_s']:.0f} s and the report ~{plan['report_s']:.0f} s kept back).")


def chance_text(scores: dict[str, Any], n_classes: int, scored: str) -> str | None:
    """One sentence when a single-label model scores at or below chance on ``scored`` (accuracy or balanced
    accuracy at most 1/classes, or an AUROC at most 0.5), else None: such a model has learned nothing it shows."""
    if scores.get("multi_label") or n_classes < 2:
        return None
    chance = 1.0 / n_classes
    clinical = scores.get("clinical") or {}
    checks = [("accuracy", scores.get("accuracy"), chance), ("balanced accuracy", scores.get("balanced_accuracy"),
                                                              chance),
              ("AUROC", clinical.get("auroc", clinical.get("auroc_macro")), 0.5)]
    for name, value, level in checks:
        if value is not None and value <= level + 1e-9:
            return (f"the model scores at or below chance: {scored} {name} {value:.3f} with {n_classes} classes "
                    f"(guessing scores {level:.3f}); check the labels, the data and the budget before using it.")
    return None


def write_run_report(out: Path, metrics: dict[str, Any], classes: list[str]) -> dict[str, str]:
    """Write ``metrics.json``, ``confusion_matrix.png`` (single-label), ``learning_curve.png`` and ``report.md``."""
    out.mkdir(parents=True, exist_ok=True)
    scored = "test" if metrics.get("test") else "val"
    files = {
        "metrics": out / "metrics.json",
        "learning_curve": out / "learning_curve.png",
        "report": out / "report.md",
    }
    write_json(files["metrics"], metrics)
    if "confusion_matrix" in metrics[scored]:
        files["confusion_matrix"] = out / "confusion_matrix.png"
        confusion_matrix_png(metrics[scored]["confusion_matrix"], classes, files["confusion_matrix"],
                             f"Confusion matrix ({scored}, n={metrics[scored]['n']})")
    score = "mAP" if (metrics.get("val") or {}).get("multi_label") else \
        "balanced accuracy" if (metrics.get("balance") or {}).get("balanced") else "accuracy"
    learning_curve_png(metrics["history"]["epochs"], files["learning_curve"], f"Learning curve: {metrics['strategy']}",
                       score)
    atomic_write_text(files["report"], render_markdown(metrics, classes) + run_id_line(metrics))
    return {k: str(v) for k, v in files.items()}


def run_id_line(metrics: dict[str, Any]) -> str:
    """The report's last line: the run id that ``metrics.json`` and the bundle's ``config.json`` carry too, so a
    reader can tell that the files of a folder come from one run."""
    return f"\nRun `{metrics['run_id']}`.\n" if metrics.get("run_id") else ""


def ci_text(ci: list[float] | None) -> str:
    """`` (95% CI lo-hi)``, or nothing without an interval."""
    return f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else ""


def small_test_warning(ci: list[float] | None, n: int) -> str:
    """A warning when the interval is wider than 0.1: close models cannot be told apart on this test set."""
    if not ci or ci[1] - ci[0] <= 0.1:
        return ""
    return (f" With {n} examples the interval is {ci[1] - ci[0]:.2f} wide: a model whose accuracy differs by less "
            "than that is not shown to be better or worse.")


def render_markdown(m: dict[str, Any], classes: list[str]) -> str:
    scored = "test" if m.get("test") else "val"
    s = m[scored]
    gap = m["train_val_gap"]
    # the task says what its examples are called and how the backbone read them (tasks.ClassificationTask.finish)
    unit, inputs = m.get("unit", "examples"), m.get("inputs", "inputs as the backbone's preprocessing reads them")
    kind = "multi-label, " if m["data"].get("multi_label") else ""
    lines = [
        f"# transferkit run: {m['strategy']} on {m['backbone']['name']}",
        "",
        f"- Data: {m['data']['train']} train / {m['data']['val']} validation / {m['data']['test']} test {unit}, "
        f"{kind}{len(classes)} classes (split: {m['data']['split']})."
        + (" Patients: " + ", ".join(f"{k} {v}" for k, v in m["data"]["patients"].items())
           + "; no patient is in two splits." if m["data"].get("patients") else ""),
        *([f"- **Caution**: {m['data']['copies']['note']}."] if m["data"].get("copies") else []),
        f"- Backbone: `{m['backbone']['name']}` ({m['backbone']['source']}, weights: "
        f"{m['backbone']['weights']}), {inputs}.",
        f"- Trainable parameters: {m['trainable_params']:,}; precision: {m['precision']}.",
        f"- Wall time: {m['timings']['total_s']:.1f} s "
        f"""({', '.join(f'{k.removesuffix(chr(95) + chr(115))} {v:.1f} s' for k, v in m['timings'].items()
                        if k != 'total_s')}).""",
        *([budget_text(m['budget'], m['timings']['total_s'])] if m.get('budget') else []),
        "",
        f"## Scores on the {scored} set (n={s['n']})" if scored == "test" or not m.get("estimate") else
        f"## Cross-validated scores (n={s['n']}, out-of-fold)",
        "",
        f"**Accuracy {s['accuracy']:.3f}**{ci_text(s.get('accuracy_ci'))}, macro-F1 {s['macro_f1']:.3f}"
        f"{ci_text(s.get('macro_f1_ci'))}, log-loss "
        f"{s['log_loss']:.3f}.{small_test_warning(s.get('accuracy_ci'), s['n'])}"
        if not s.get("multi_label") else
        f"**Macro-F1 {s['macro_f1']:.3f}**, micro-F1 {s['micro_f1']:.3f}{ci_text(s.get('micro_f1_ci'))}, "
        f"mAP {fmt(s.get('map'))}, exact-match accuracy {s['accuracy']:.3f}, Hamming score "
        f"{s['hamming_score']:.3f}, log-loss {s['log_loss']:.3f} (at {threshold_text(s['threshold'])}).",
    ]
    if m.get("at_chance"):
        lines += ["", f"**Warning: {m['at_chance']}**"]
    if m.get("estimate"):
        lines += ["", estimate_text(m["estimate"], scored == "test")]
    elif scored == "val":
        lines.append("No test set was given, so these are validation scores that also chose the "
                     "checkpoint: optimistic.")
    # what the history's "accuracy" is: mAP for multi-label runs, balanced accuracy for balanced ones
    gap_name = "mAP" if s.get("multi_label") else "balanced accuracy" if (m.get("balance") or {}).get("balanced") \
        else "accuracy"
    lines += ["", *label_lines(m, s), *per_class_table(s, bool(m.get("balance", {}).get("balanced"))), "",
        "## Training",
        "",
        (f"Best epoch {m['history']['best_epoch'] + 1} of {len(m['history']['epochs'])} ({m['history']['stopped']}). "
         f"Train-validation gap at that epoch: {gap_name} {gap['accuracy']:+.3f}, loss {gap['loss']:+.3f} "
         "(large positive values mean overfitting).") if not m.get("estimate") else
        ((f"Logistic regression solved exactly on every labelled example (C {m['details']['probe']['C']:.3g}, chosen "
          f"by {m['details']['probe']['cv_folds']}-fold cross-validation). " if "linear" in m["strategy"] and
          m.get("details", {}).get("probe") else
          f"{len(m['history']['epochs'])} epoch(s) on every labelled example ({m['history']['stopped']}). ")
         + f"Training minus cross-validated score: {gap_name} {gap['accuracy']:+.3f}, loss {gap['loss']:+.3f} (large "
           "positive values mean overfitting)."),
    ]
    if m.get("details", {}).get("decision"):
        lines += ["", f"auto: {m['details']['decision']}; kept **{m['details']['chosen']}**."]
    if m.get("backbone_ranking"):
        lines += ["", ranking_text(m["backbone_ranking"])]
    if m.get("continued"):
        lines += ["", "## Continued from a bundle", "", *continued_lines(m["continued"])]
    if m.get("search"):
        lines += ["", "## Search", "", *search_lines(m["search"])]
    if m.get("tta"):
        lines += ["", tta_text(m["tta"])]
    if m.get("label_noise"):
        lines += ["", "## Possibly mislabelled training examples", "", *noise_lines(m["label_noise"])]
    if m.get("scratch_baseline"):
        lines += ["", "## Against scratch", "", scratch_text(m["scratch_baseline"])]
    if m.get("classical_baseline"):
        lines += ["", "## Against a classical baseline", "", classical_text(m["classical_baseline"])]
    wrong = m.get("confidently_wrong") or []
    if wrong:
        where = "out-of-fold" if scored == "val" and m.get("estimate") else f"{scored} set"
        lines += ["", f"## Most confidently wrong ({where})", "",
                  "Check these first: a wrong label, an ambiguous example, or a kind of input the "
                  "training data lacks.", "",
                  "| confidence | true | predicted | input |", "|---|---|---|---|"]
        for w in wrong:
            shown = w.get("text", w["input"]).replace("|", "\\|")
            where = f" ({w['input']})" if "text" in w else ""
            lines.append(f"| {w['confidence']:.3f} | {w['true']} | {w['predicted']} | {shown}{where} |")
    if m.get("explanations"):
        lines += ["", "## What the model looks at", "", *explanation_lines(m["explanations"])]
    if m.get("clinical"):
        lines += render_clinical(m, scored)
    if "confusion_matrix" in s:
        lines += ["", "![confusion matrix](confusion_matrix.png)"]
    lines += ["", "![learning curve](learning_curve.png)", ""]
    return "\n".join(lines)


def explanation_lines(e: dict[str, Any]) -> list[str]:
    """The report's section on explanations: the shortcut warning first, what the deletion check found, the border
    shares, then the figure (images, spectrograms) or each text's most influential words."""
    from .explain import BORDER, DECORATION, even_share

    if not e.get("available"):
        return [f"No explanations: {e['why']}"]
    out = []
    if e.get("shortcut"):
        out += [f"**Warning: possible shortcut.** {e['shortcut'][0].upper()}{e['shortcut'][1:]}.", ""]
    d = e.get("deletion")
    if d:
        verdict = ("the maps point at what the model uses" if d["score"] >= DECORATION else
                   "**the maps do no better than random order: read them as decoration, not as evidence**"
                   if d["score"] > -DECORATION else
                   "**the maps do worse than random order: they point away from what the model uses; do not trust "
                   "them**")
        unit = "tokens" if e.get("kind") == "tokens" else "regions"
        out.append(f"Deletion check on {d['n']} right answers: their most-attributed {unit} are removed first, and the "
                   f"predicted class's probability is compared with removing as many in random order. The area "
                   f"between the two curves is **{d['score']:+.3f}** (area under the curve: map order "
                   f"{d['map_auc']:.3f}, random order {d['random_auc']:.3f}): above 0 the maps find what changes the "
                   f"prediction, about 0 they decorate, below 0 they mislead. Here {verdict}.")
    if e.get("empty_maps"):
        out += ["", f"{e['empty_maps']} of the right answers drawn for the check had an empty map (no region raises "
                    "their class's score: the class is recognised by what is absent) and were left out of it."]
    if e.get("border_share"):
        shares = ", ".join(f"{c} {v:.0%}" for c, v in e["border_share"].items())
        band = e.get("border_band", BORDER)
        out += ["", f"Share of each class's attribution in the image's outer {band:.0%} band (a map spread evenly "
                    f"puts {even_share(band):.0%} there): {shares}."]
    out += ["", f"Maps: {e['method']}, on the {e['on']}; {e['examples']} examples in the figure; {e['seconds']:.1f} s "
                "in all."]
    if e.get("kind") == "tokens":
        out += ["", "Each class's most confident right answers and most confidently wrong ones, with the words that "
                    "pushed most toward the predicted label:", ""]
        for t in e.get("texts", []):
            words = ", ".join(f"**{w.replace('|', '/')}** ({s:.2f})" for w, s in t["words"]) or "none"
            verdict = "right" if t["correct"] else "wrong"
            out.append(f"- {t['class']}, {verdict}: said {t['label']} ({t['probability']:.2f}): {words}")
    elif e.get("examples"):
        out += ["", "Each row is a class: its most confident right answers, then its most confidently wrong "
                    "examples (the map of the class the model said). Red: what the prediction rests on.", "",
                "![what the model looks at](explanations.png)"]
    return out


def search_lines(s: dict[str, Any]) -> list[str]:
    """The report's section on the search (``metrics["search"]``)."""
    t = s["trials"]
    best = s["best"]
    options = ", ".join(f"{k} {short(v)}" for k, v in best["options"].items()) or "its defaults"
    lines = [f"Settings chosen by an Optuna search (TPE, {s['pruner']} pruning) of {t['planned']} trials on "
             f"{s['objective']}: {t['complete']} complete, {t['pruned']} pruned, {t['failed']} failed"
             + (f" ({t['retried']} retried after a worker stopped)" if t.get("retried") else "")
             + (f", {t['queued']} left queued by the budget" if t.get("queued") else "")
             + f"; {s['workers']} worker(s), {s['seconds']:.0f} s of trials. Study `{s['study']}`"
             + (f" in `{s['storage']}`." if s.get("storage") else "."),
             "",
             f"Best: trial {best['number']}, **{best['strategy']}** with {options}: {s['metric']} "
             f"{best['value']:.3f}."]
    space = s.get("space") or {}
    if space:
        def dim(d: Any) -> str:
            if isinstance(d, dict):
                return f"{short(d['low'])}-{short(d['high'])}{' (log)' if d.get('log') else ''}"
            return "/".join(map(str, d))

        lines.append("Space: " + "; ".join(
            f"{n}: " + ", ".join([f"{k} {dim(d)}" for k, d in v.get("search", {}).items()]
                                 + [f"{k} = {short(x)}" for k, x in v.get("fixed", {}).items()])
            for n, v in space.items()) + ".")
    top = s.get("top") or {}
    if top.get("n", 0) > 1:
        spans = [f"{k.split('.', 1)[-1]} {short(v[0])}-{short(v[1])}" if len(v) == 2 and not isinstance(v[0], str)
                 else f"{k.split('.', 1)[-1]} {'/'.join(map(str, v))}" for k, v in top["span"].items()]
        lines.append(f"The best {top['n']} trials: {top['mean']:.3f} +- {top['sd']:.3f}, spanning "
                     + "; ".join(spans) + ".")
    c = s.get("comparison")
    if c:
        ci = c["ci"]
        lines += ["", f"**Against the default settings** ({c['defaults_strategy']}, trained on the same splits and "
                      f"scored on the same {c['n']} {c['part']} examples): {s['metric']} {c['searched']:.3f} searched "
                      f"vs {c['defaults']:.3f} default, difference {c['difference']:+.3f} (95% paired bootstrap "
                      f"interval {ci[0]:+.3f} to {ci[1]:+.3f}): {c['verdict']}."]
    lines += ["", "![search](search.png)"]
    return lines


def short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def continued_lines(c: dict[str, Any]) -> list[str]:
    """The report's lines for a run from a bundle (``fit --init-from``): where it started, the classes it added,
    replay and L2-SP, and what was forgotten on the old test data."""
    out = [f"Started from `{c['init_from']}` ({len(c['bundle_classes'])} classes)."
           + (f" New classes: {', '.join(map(str, c['new_classes']))}." if c["new_classes"] else " No new classes.")]
    if c.get("missing_from_new_data"):
        how = "seen in training through replay only" if c.get("replay") else "kept as classes of the model, with no " \
            "training example in this run"
        out.append(f"Bundle classes the new data lack ({how}): {', '.join(map(str, c['missing_from_new_data']))}.")
    r = c.get("replay")
    out.append(f"Replay: {r['examples']} old training examples ({r['fraction']:g} of each class) from `{r['data']}`"
               + (f", {r['to_validation']} of them in the validation split." if r.get("to_validation") else ".")
               if r else "Replay: none.")
    out.append(f"L2-SP: strength {c['l2sp']:g}." if c.get("l2sp") else "L2-SP: off.")
    f = c.get("forgetting")
    if f:
        key = f["metric"]
        name = "mAP" if f.get("multi_label") else {"accuracy": "Accuracy", "balanced_accuracy": "Balanced accuracy",
                                                   "micro_f1": "Micro-F1", "map": "mAP@[.5:.95]"}.get(key, key)
        lost = f["forgotten"]
        out += ["", f"**Forgetting** on the old test data (`{f['old_test']}`, n={f['n']}): {name} "
                f"{fmt(f['before'][key])} before (the bundle), {fmt(f['after'][key])} after: "
                + ("not measurable on these data." if lost is None else
                   f"{f['forgotten']:.3f} lost." if round(f["forgotten"], 3) > 0 else
                   f"{-f['forgotten']:.3f} gained." if round(f["forgotten"], 3) < 0 else "nothing lost.")]
    else:
        out.append("Forgetting: not measured (give the old task's test data with --old-test).")
    return out


def render_clinical(m: dict[str, Any], scored: str) -> list[str]:
    """The clinical section of a medical run's report: operating point, AUROC, sensitivity/specificity with
    95% intervals, PPV/NPV, calibration."""
    c = m["clinical"]
    s = m[scored]["clinical"]

    def pct(v: float | None, ci: list[float] | None = None) -> str:
        if v is None:
            return "-"
        return f"{v:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else "")

    lines = ["", f"## Clinical scores ({scored} set, n={s['n']})", ""]
    if c.get("positive") is not None:
        lines += [
            f"Positive class **{c['positive']}** (prevalence {s['prevalence']:.3f}); operating threshold "
            f"**{c['threshold']:.3f}** on its {'calibrated ' if c.get('calibrated', True) else ''}probability "
            f"({c['threshold_rule']}). 95% intervals: Wilson "
            "for proportions, bootstrap for AUROC.",
            "",
            "| score | value (95% CI) |",
            "|---|---|",
            f"| AUROC | {pct(s['auroc'], s['auroc_ci'])} |",
            f"| sensitivity | {pct(s['sensitivity'], s['sensitivity_ci'])} ({s['tp']} of {s['tp'] + s['fn']} "
            "positives found) |",
            f"| specificity | {pct(s['specificity'], s['specificity_ci'])} ({s['tn']} of {s['tn'] + s['fp']} "
            "negatives cleared) |",
            f"| PPV | {pct(s['ppv'], s['ppv_ci'])} |",
            f"| NPV | {pct(s['npv'], s['npv_ci'])} |",
            f"| balanced accuracy | {pct(s['balanced_accuracy'])} |",
            f"| average precision | {pct(s['average_precision'])} |",
            "",
            f"At threshold 0.5 instead: sensitivity {pct(s['at_0.5']['sensitivity'])}, specificity "
            f"{pct(s['at_0.5']['specificity'])}.",
        ]
    else:
        lines += [f"Macro one-vs-rest AUROC {pct(s['auroc_macro'])}, balanced accuracy {pct(s['balanced_accuracy'])}.",
                  "", "| class | AUROC | sensitivity | specificity | support |", "|---|---|---|---|---|"]
        lines += [f"| {k} | {pct(v['auroc'])} | {pct(v['sensitivity'])} | {pct(v['specificity'])} | {v['support']} |"
                  for k, v in s["per_class"].items()]
    ece = c["ece"][scored]
    prior = (f"the class weights' shift undone ({', '.join(f'{w:.2f}' for w in c['class_weights'])}), then "
             if c.get("class_weights") else "")
    from .clinical import MIN_PER_CLASS_FOR_TEMPERATURE

    if c.get("calibrated", True):
        how = f"{prior}temperature {c['temperature']:.3f} (fitted on validation)"
    else:
        how = (f"none: validation has fewer than {MIN_PER_CLASS_FOR_TEMPERATURE} examples of some class, too few to "
               "check a calibration, so the probabilities are the model's own")
    lines += ["", f"Calibration: {how}; expected calibration error {ece['before']:.3f} before, {ece['after']:.3f} "
              f"after. {'The threshold and calibration were' if c.get('calibrated', True) else 'The threshold was'} "
              + (f"chosen on the validation set ({m['data']['val']} images), so with few validation images the choice "
                 "is itself uncertain." if not m.get("estimate") else
                 f"chosen on the out-of-fold predictions of all {m['data']['train']} training images, the same ones "
                 "these cross-validated scores come from: the scores at the threshold lean optimistic."),
              "", "![ROC and reliability](roc.png)"]
    return lines
