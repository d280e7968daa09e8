"""The comparison's files: ``results.csv``, ``summary.csv``, ``compare.json``, the plots, ``report.md`` and a
self-contained ``report.html``."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from .runs import ALL, CLASSICAL, duration
from .statistics import gap_label, metric_label, summary_cell, test_half_width

RUN_COLUMNS = ("budget", "seed", "strategy", "kept", "labels", "labels_per_class", "train_n", "val_n", "score",
               "test_accuracy", "test_macro_f1", "test_balanced_accuracy", "val_score", "train_score", "gap", "epochs",
               "stopped", "wall_s")
SUMMARY_COLUMNS = ("budget", "strategy", "seeds", "labels_per_class", "score", "score_lo", "score_hi", "gap",
                   "gap_lo", "gap_hi", "wall_s")


def _csv(rows: list[dict], columns: tuple) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items() if k in columns})
    return buf.getvalue()


def write_results(out: Path, runs: list[dict]) -> None:
    """Write ``results.csv`` (one row per finished run) atomically, so an interrupted comparison leaves it whole."""
    from ..io import atomic_write_text

    atomic_write_text(out / "results.csv", _csv(runs, RUN_COLUMNS))


def write_comparison(out: Path, result: dict[str, Any]) -> dict[str, str]:
    """``results.csv``, ``summary.csv``, ``compare.json``, the three PNGs, ``report.md`` and ``report.html``."""
    from ..io import atomic_write_text, write_json
    from ..evaluation.plots import data_efficiency_png, gap_png, time_to_accuracy_png

    out.mkdir(parents=True, exist_ok=True)
    cfg = result["config"]
    files = {k: str(out / v) for k, v in (("results", "results.csv"), ("summary", "summary.csv"),
                                           ("json", "compare.json"), ("data_efficiency", "data_efficiency.png"),
                                           ("time_to_accuracy", "time_to_accuracy.png"),
                                           ("gap", "overfitting_gap.png"), ("markdown", "report.md"),
                                           ("html", "report.html"))}
    write_results(out, result["runs"])
    atomic_write_text(files["summary"], _csv(result["summary"], SUMMARY_COLUMNS))
    write_json(files["json"], result)
    label = metric_label(cfg["metric"])
    data_efficiency_png(result["summary"], cfg["strategies"], Path(files["data_efficiency"]), f"test {label}")
    top = cfg["budgets"][-1]
    trained = [s for s in cfg["strategies"] if s != CLASSICAL]  # the baseline has no validation curve and no gap
    time_to_accuracy_png([r for r in result["runs"] if r["budget"] == str(top)], trained,
                         Path(files["time_to_accuracy"]),
                         f"Time to accuracy ({top} labels per class)")
    gap_png(result["summary"], trained, cfg["budgets"], Path(files["gap"]))
    atomic_write_text(files["markdown"], render_markdown(result))
    atomic_write_text(files["html"], render_html(result, out))
    return files


def _f(v: Any, digits: int = 3) -> str:
    return "-" if v is None or (isinstance(v, float) and v != v) else f"{v:.{digits}f}"


def _summary_lines(result: dict) -> list[str]:
    cfg = result["config"]
    head = "| labels/class | " + " | ".join(cfg["strategies"]) + " |"
    lines = [head, "|---" * (len(cfg["strategies"]) + 1) + "|"]
    for b in cfg["budgets"]:
        cells = []
        for name in cfg["strategies"]:
            c = summary_cell(result["summary"], b, name)
            if c is None:
                cells.append("-")
                continue
            ci = f" ({_f(c['score_lo'])}-{_f(c['score_hi'])})" if c["score_lo"] is not None else ""
            cells.append(f"{_f(c['score'])}{ci}")
        lab = cfg["labels_per_class"].get(str(b), 0)
        lines.append(f"| {b}{f' ({lab:.0f})' if b == ALL else ''} | " + " | ".join(cells) + " |")
    return lines


def _test_note(result: dict[str, Any]) -> str:
    """The test set's own uncertainty, which the interval over seeds does not include."""
    cfg = result["config"]
    top = [c for c in result["summary"] if c["budget"] == str(cfg["budgets"][-1])]
    if not top:
        return ""
    best = max(top, key=lambda c: c["score"])
    half = test_half_width(best, cfg["metric"], cfg["test_n"], result["runs"])
    if half is None:
        return ""
    return (f"The interval over seeds covers which examples were labelled and the training's randomness; the test "
            f"set's own sampling adds about +-{half:.3f} at {best['score']:.3f} ({cfg['test_n']} test examples).")


def _headline_order(result: dict[str, Any]) -> list[str]:
    """The three transfer-vs-scratch headlines; the classical baseline's first where it beats transfer (that
    qualifies the rest), else last."""
    h = result["headlines"]
    if "classical" not in h:
        return ["time", "labels", "gap"]
    three = ["time", "labels", "gap"]
    return ["classical", *three] if h["classical"].get("wins") else [*three, "classical"]


def _classical_note(result: dict[str, Any]) -> str:
    h = result["headlines"].get("classical")
    if h is None:
        return ""
    what = h.get("baseline") or "hand-made features + logistic regression"
    return (f"{CLASSICAL}: {what}, no deep network; it trains on the training and validation examples together "
            "and chooses its regularisation by 5-fold cross-validation on them, so it has no validation curve and "
            "no overfitting gap.")


def render_markdown(result: dict[str, Any]) -> str:
    """``report.md``: headlines, the summary table, the test set's own uncertainty, failures, cautions, the plots."""
    cfg = result["config"]
    label = metric_label(cfg["metric"])
    lines = ["# Transfer vs scratch", "",
             f"{cfg['kind'].capitalize()} data `{cfg['data']}`, backbone {cfg['backbone'] or 'default'}; "
             f"{len(cfg['classes'])} classes; every run scored on the same {cfg['test_n']} test examples; "
             f"{cfg['seeds']} seed(s) per cell; {len(result['runs'])} runs taking "
             f"{duration(sum(r['wall_s'] for r in result['runs']))} in all "
             f"(resumed runs included).",
             "", "## Headlines", ""]
    lines += [f"- {result['headlines'][k]['sentence']}" for k in _headline_order(result)]
    lines += ["", f"## Test {label} (mean, 95% interval over seeds)", "", *_summary_lines(result), "",
              _test_note(result), "", *([_classical_note(result), ""] if _classical_note(result) else [])]
    if result.get("failed"):
        lines += ["## Failed runs", "", *[f"- {r['strategy']}, {r['budget']} labels per class, seed {r['seed']}: "
                                          f"{r['failed']}" for r in result["failed"]], ""]
    if result["warnings"]:
        lines += ["## Caution", "", *[f"- {w}" for w in result["warnings"]], ""]
    lines += ["## Plots", "", "- `data_efficiency.png`: test score against labels per class (shaded: 95% interval).",
              "- `time_to_accuracy.png`: best validation score so far against wall time, largest budget, each seed.",
              f"- `overfitting_gap.png`: the kept model's {gap_label(result['runs'])} on its training examples minus "
              "on validation (no augmentation), per budget and strategy.",
              "", "Every run: `results.csv`; per budget and strategy: `summary.csv`.", ""]
    return "\n".join(lines)


def render_html(result: dict[str, Any], out: Path) -> str:
    """A single HTML file: headlines, the summary table, the plots embedded as data URIs, every run."""
    import base64
    import html

    cfg = result["config"]
    e = html.escape

    def img(name: str, alt: str) -> str:
        p = out / name
        if not p.exists():
            return ""
        data = base64.b64encode(p.read_bytes()).decode()
        return (f'<figure><img alt="{e(alt)}" src="data:image/png;base64,{data}">'
                f'<figcaption>{e(alt)}</figcaption></figure>')

    md_rows = _summary_lines(result)
    table = ["<table><tr>" + "".join(f"<th>{e(h.strip())}</th>" for h in md_rows[0].strip("|").split("|")) + "</tr>"]
    for row in md_rows[2:]:
        table.append("<tr>" + "".join(f"<td>{e(c.strip())}</td>" for c in row.strip("|").split("|")) + "</tr>")
    table.append("</table>")
    runs = ["<table><tr>" + "".join(f"<th>{c}</th>" for c in RUN_COLUMNS) + "</tr>"]
    for r in result["runs"]:  # None (the classical baseline's gap, epochs, ...) shows as "-"
        cells = (r.get(c) for c in RUN_COLUMNS)
        runs.append("<tr>" + "".join(f"<td>{e(_f(v) if v is None or isinstance(v, float) else str(v))}</td>"
                                     for v in cells) + "</tr>")
    runs.append("</table>")
    label = metric_label(cfg["metric"])
    body = [
        "<h1>Transfer vs scratch</h1>",
        f"<p>{e(cfg['kind'])} data <code>{e(cfg['data'])}</code>, backbone {e(str(cfg['backbone'] or 'default'))}, "
        f"{len(cfg['classes'])} classes; every run scored on the same {cfg['test_n']} test examples; "
        f"{cfg['seeds']} seed(s) per cell.</p>",
        "<h2>Headlines</h2><ul>" + "".join(f"<li>{e(result['headlines'][k]['sentence'])}</li>"
                                           for k in _headline_order(result)) + "</ul>",
        f"<h2>Test {e(label)}: mean (95% interval over seeds)</h2>", *table, f"<p>{e(_test_note(result))}</p>",
        *([f"<p>{e(_classical_note(result))}</p>"] if _classical_note(result) else []),
        *(["<h2>Failed runs</h2><ul>" + "".join(
            f"<li>{e(r['strategy'])}, {e(r['budget'])} labels per class, seed {r['seed']}: {e(r['failed'])}</li>"
            for r in result["failed"]) + "</ul>"] if result.get("failed") else []),
        *(["<h2>Caution</h2><ul>" + "".join(f"<li>{e(w)}</li>" for w in result["warnings"]) + "</ul>"]
          if result["warnings"] else []),
        "<h2>Plots</h2>",
        img("data_efficiency.png", "Data efficiency: test score against labels per class"),
        img("time_to_accuracy.png", "Time to accuracy: best validation score so far against wall time"),
        img("overfitting_gap.png",
            "Overfitting: training minus validation accuracy of the kept model, read without augmentation"),
        "<h2>Every run</h2>", *runs,
    ]
    style = ("body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}td,th{border:1px solid #ccc;padding:3px 8px}"
             "th{background:#f3f3f3}img{max-width:100%}figcaption{color:#555;font-size:0.9em}")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>transferkit: transfer vs scratch"
            f"</title><style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
