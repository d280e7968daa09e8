"""The ``transferkit`` command. Each command is a thin shell over the Python API; heavy imports happen
inside the commands so ``transferkit --help`` answers at once."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from . import __version__
from .errors import TransferkitError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Adapt pretrained models to your small labelled dataset, and show that transfer paid off.",
)


def _fail(err: Exception) -> None:
    from .console import console

    console.print(f"[red]error:[/] {err}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"transferkit {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """transferkit: pretrained backbone -> your labels, with evidence."""


@app.command()
def fit(
    data: Path = typer.Argument(..., help="Folder of class folders (optionally train/ val/ test/), or a CSV/TSV/JSONL of path,label."),
    out: Path = typer.Option(Path("runs/latest"), "--out", "-o", help="Run folder: model/, metrics.json, plots, report.md."),
    backbone: str = typer.Option("efficientnet_lite0", "--backbone", "-b", help="Registry name, timm:NAME, torchvision:NAME, or a path (see `transferkit backbones`)."),
    arch: Optional[str] = typer.Option(None, help="Architecture of a checkpoint file given as --backbone (timm name or torchvision:NAME)."),
    strategy: str = typer.Option("auto", "--strategy", "-s", help="linear, finetune, gradual, scratch or auto."),
    budget: Optional[str] = typer.Option(None, help="Wall-time budget, e.g. 90s, 10m, 1h: training plans its epochs to finish inside it (auto also uses it to decide whether to fine-tune)."),
    epochs: Optional[int] = typer.Option(None, help="Maximum epochs (default: the strategy's own)."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (default: the strategy's own)."),
    batch_size: Optional[int] = typer.Option(None, help="Images per step (default: the strategy's own)."),
    seed: int = typer.Option(0, help="Seed for splits, initialisation and shuffling."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable or missing images with a warning and a count."),
    precision: str = typer.Option("auto", help="auto (bf16 where the CPU/GPU supports it), bf16, fp16 or no."),
    resume: bool = typer.Option(False, help="Continue an interrupted run in --out from its last epoch checkpoint."),
    image_size: Optional[int] = typer.Option(None, help="Override the backbone's input resolution (smaller trains faster on a CPU)."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics summary as JSON on stdout."),
) -> None:
    """Train on DATA and write a bundle, metrics, plots and a report to --out."""
    from .api import fit as fit_api

    options = {k: v for k, v in {"epochs": epochs, "lr": lr, "batch_size": batch_size}.items() if v is not None}
    if strategy == "auto" and options:
        _fail(TransferkitError("--epochs/--lr/--batch-size apply to linear, finetune, gradual and scratch; auto sets its own (use --budget)."))
    try:
        model = fit_api(str(data), backbone=backbone, arch=arch, strategy=strategy, out=out, budget=budget, seed=seed,
                        skip_bad=skip_bad, precision=precision, resume=resume, image_size=image_size, **options)
    except TransferkitError as err:
        _fail(err)
    m = model.metrics
    scored = "test" if m["test"] else "val"
    summary = {
        "strategy": m["strategy"], "scored_on": scored, "n": m[scored]["n"],
        "accuracy": round(m[scored]["accuracy"], 4), "macro_f1": round(m[scored]["macro_f1"], 4),
        "seconds": round(m["timings"]["total_s"], 1), "report": str(out / "report.md"), "model": str(out / "model"),
    }
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        from .console import results as console

        console.print(
            f"[green]done[/] {summary['strategy']}: {scored} accuracy {summary['accuracy']:.3f}, macro-F1 "
            f"{summary['macro_f1']:.3f} (n={summary['n']}) in {summary['seconds']:.1f}s\n"
            f"model:  {summary['model']}\nreport: {summary['report']}",
            highlight=False,
        )


@app.command()
def predict(
    model_dir: Path = typer.Argument(..., help="A bundle folder (the run's model/)."),
    images: list[Path] = typer.Argument(..., help="Image files to classify."),
    top_k: int = typer.Option(3, "--top-k", "-k", help="How many labels to show per image."),
    as_json: bool = typer.Option(False, "--json", help="JSON lines on stdout."),
    as_csv: bool = typer.Option(False, "--csv", help="CSV on stdout: path,label,probability (top-1)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable images instead of stopping."),
) -> None:
    """Top-k labels with probabilities for each image."""
    from .bundle.model import load

    try:
        preds = load(model_dir).predict([str(p) for p in images], top_k=top_k, skip_bad=skip_bad)
    except TransferkitError as err:
        _fail(err)
    if as_json:
        for p in preds:
            typer.echo(json.dumps(p))
    elif as_csv:
        import csv

        w = csv.writer(sys.stdout)
        w.writerow(["path", "label", "probability"])
        for p in preds:
            w.writerow([p["input"], p["label"], f"{p['top'][0]['probability']:.6f}"])
    else:
        from rich.table import Table

        from .console import results as console

        table = Table("image", *[f"#{i + 1}" for i in range(len(preds[0]["top"]) if preds else 0)])
        for p in preds:
            table.add_row(p["input"], *[f"{t['label']} {t['probability']:.3f}" for t in p["top"]])
        console.print(table)


@app.command()
def evaluate(
    model_dir: Path = typer.Argument(..., help="A bundle folder (the run's model/)."),
    data: Path = typer.Argument(..., help="Labelled images: class folders (its test/ if present) or a CSV/JSONL."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write metrics.json and confusion_matrix.png here."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable images with a warning."),
    as_json: bool = typer.Option(False, "--json", help="Print all metrics as JSON on stdout."),
) -> None:
    """Score a saved model on labelled images."""
    from .bundle.model import load

    try:
        model = load(model_dir)
        m = model.evaluate(str(data), skip_bad=skip_bad)
    except TransferkitError as err:
        _fail(err)
    if out is not None:
        from .bundle.io import write_json
        from .evaluation.plots import confusion_matrix_png

        write_json(out / "metrics.json", m)
        confusion_matrix_png(m["confusion_matrix"], model.classes, out / "confusion_matrix.png", f"Confusion matrix (n={m['n']})")
    if as_json:
        typer.echo(json.dumps(m))
        return
    from rich.table import Table

    from .console import results as console

    console.print(f"accuracy [bold]{m['accuracy']:.3f}[/], macro-F1 {m['macro_f1']:.3f}, log-loss {m['log_loss']:.3f} (n={m['n']})", highlight=False)
    table = Table("class", "precision", "recall", "F1", "support")
    for c, v in m["per_class"].items():
        table.add_row(c, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", str(v["support"]))
    console.print(table)


@app.command()
def backbones(as_json: bool = typer.Option(False, "--json", help="JSON on stdout.")) -> None:
    """What is usable offline now, and what needs a download."""
    from .backbones.registry import list_backbones

    rows = list_backbones()
    if as_json:
        typer.echo(json.dumps(rows))
        return
    from rich.table import Table

    from .console import results as console

    table = Table("name", "status", "description")
    for r in rows:
        table.add_row(r["name"], ("[green]" if r["offline"] else "[yellow]") + r["status"], r["description"])
    console.print(table)
    console.print("Any timm model (timm:NAME) or torchvision model (torchvision:NAME) also works when its weights "
                  "can be downloaded, and so does a checkpoint file with --arch.", highlight=False)


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Run folder."),
    data_dir: Path = typer.Option(Path("data/fashion-mnist-10"), help="Where the demo images are written."),
    per_class: int = typer.Option(10, help="Labelled training images per class."),
    test_size: int = typer.Option(1000, help="Images from the official test set to score on."),
    budget: str = typer.Option("3m", help="Wall-time budget for the auto strategy."),
) -> None:
    """Fashion-MNIST, 10 labels per class, EfficientNet-Lite0, strategy auto: the whole job offline."""
    from .data.fashion_mnist import export_image_folder

    try:
        if not (data_dir / "train").is_dir():
            export_image_folder(data_dir, train_per_class=per_class, test_size=test_size)
    except TransferkitError as err:
        _fail(err)
    fit(data=data_dir, out=out, backbone="efficientnet_lite0", arch=None, strategy="auto", budget=budget, epochs=None,
        lr=None, batch_size=None, seed=0, skip_bad=False, precision="auto", resume=False, image_size=None, as_json=False)


if __name__ == "__main__":
    app()
