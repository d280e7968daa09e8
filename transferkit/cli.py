"""The ``transferkit`` command. Each command is a thin shell over the Python API; heavy imports happen
inside the commands so ``transferkit --help`` answers at once."""

from __future__ import annotations

import contextvars
import difflib
import functools
import inspect
import json
import os
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
    from rich.markup import escape

    from .console import console

    # escaped: a message such as "pip install 'transferkit[datasets]'" must not be read as rich markup
    console.print(f"[red]error:[/] {escape(_one_line(str(err)))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def _one_line(message: str) -> str:
    """Our own message out of torch's wrapping of an error raised in a DataLoader worker process ("Caught DataError
    in DataLoader worker process 0. Original Traceback ...", ending in the original ``module.Class: message``)."""
    if message.startswith("Caught ") and "Original Traceback" in message:
        last = message.rstrip().splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return message


def _max_pixels_option(skips: bool = True):
    """``--max-image-pixels``; ``skips``: the command has ``--skip-bad`` (serve answers such an upload 400 instead)."""
    instead = "--skip-bad skips it instead" if skips else "the request is answered 400"
    return typer.Option(
        None, "--max-image-pixels",
        help="Images: refuse one with more pixels than this, checked from its header before decoding (default "
             f"80000000; {instead}). Images more elongated than 50:1 are refused too.",
    )


def _log_with_option(what: str):
    """``--log-with``: the trackers of a command (:mod:`transferkit.engine.tracking`)."""
    return typer.Option(None, "--log-with", help=f"Track {what}: tensorboard, mlflow or all, beside --out (or in "
                                                 "--log-dir).")


def _log_dir_option():
    return typer.Option(None, "--log-dir", help="Where trackers write (default: --out's parent folder; MLflow: "
                                                "unless MLFLOW_TRACKING_URI names a server).")


def _limits_images(command):
    """--max-image-pixels for every image ``command`` reads, and for nothing after it: the limit in force before is
    restored when the command returns (a later command in the same process, a test or a notebook, gets its own)."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        from .data.images import image_limits

        try:
            with image_limits(kwargs.get("max_image_pixels")):
                return command(*args, **kwargs)
        except TransferkitError as err:  # a limit that is not a pixel count (the command answers its own errors)
            _fail(err)

    return run


def _setting_name(param) -> str:
    """A click parameter's key in run.yaml: its long flag without dashes (``--image-size``: ``image_size``)."""
    longs = [o for o in getattr(param, "opts", []) if o.startswith("--")]
    return longs[0][2:].replace("-", "_") if longs and param.param_type_name == "option" else param.name


# options a run.yaml holds without a flag of their own, by command: fit's strategy options (weight_decay...) and
# compare's options for every run (window, balance, strategy options...), which the command passes on as given
_EXTRA_KEYS = {"fit": "strategy_options", "compare": "fit_options"}
_EXTRA: contextvars.ContextVar[dict] = contextvars.ContextVar("extra_options", default={})
# what a named strategy's options are, in a fit file: left out when --strategy names another strategy
_STRATEGY_KEYS = ("epochs", "lr", "batch_size", "strategy_options")


def _apply_config(ctx, command: str, path: Path, kwargs: dict) -> tuple[dict, dict]:
    """``kwargs`` with the settings of ``path`` (a run.yaml, :mod:`transferkit.runfile`) where no flag was given,
    each converted and checked by its option's own type, and the file's options without flags (``_EXTRA_KEYS``);
    every problem is one line, all at once."""
    from .console import warn
    from .runfile import read_settings

    try:
        data, settings, note = read_settings(path, command)
    except TransferkitError as err:
        _fail(err)
    warnings = [note] if note else []
    params = {_setting_name(p): p for p in ctx.command.params if p.name not in ("config", "data")}
    given = {"COMMANDLINE", "ENVIRONMENT", "PROMPT"}  # the sources of a flag the user gave

    def flagged(param) -> bool:
        source = ctx.get_parameter_source(param.name)
        return source is not None and source.name in given

    if command == "fit" and "strategy" in params and flagged(params["strategy"]) and \
            settings.get("strategy") != kwargs.get("strategy"):
        dropped = {k: settings.pop(k) for k in _STRATEGY_KEYS if settings.get(k) not in (None, {})}
        if dropped:
            warnings.append(f"--strategy {kwargs['strategy']} replaces the file's {settings.get('strategy')}: its "
                            f"options ({', '.join(f'{k} {v}' for k, v in dropped.items())}) are left out.")
    problems, extra = [], {}
    for key, value in settings.items():
        name = str(key)[:40]  # YAML keys may be anything: named by their text, cut short
        if key == _EXTRA_KEYS.get(command):
            if not isinstance(value, dict):
                problems.append(f"{path}: {key}: expected a mapping of option: value, got a {type(value).__name__}")
            elif not all(isinstance(k, str) for k in value):
                problems.append(f"{path}: {key}: every key must be an option's name (got "
                                f"{next(str(k)[:40] for k in value if not isinstance(k, str))!r})")
            else:
                extra = value  # checked by the strategy's own config, or the task's options
            continue
        param = params.get(key) if isinstance(key, str) else None
        if param is None:
            near = difflib.get_close_matches(name, sorted(params), n=1)
            problems.append(f"{path}: unknown setting {name!r}" + (f" (closest: {near[0]!r})" if near else ""))
            continue
        if flagged(param):
            continue  # the flag beside --config wins
        if value is None and param.default is not None:
            shown = str(param.default).lower() if isinstance(param.default, bool) else param.default
            problems.append(f"{path}: {key}: null is not a value here: give one, or leave the key out for the "
                            f"default ({shown})")
            continue
        if isinstance(value, (list, dict)):  # by type only: formatting a YAML alias bomb would never end
            problems.append(f"{path}: {key}: expected one value, got a {type(value).__name__}"
                            + ("; write several as one comma-separated string" if isinstance(value, list) else ""))
            continue
        if isinstance(value, bool) and not getattr(param, "is_flag", False):
            problems.append(f"{path}: {key}: expected a value, got {str(value).lower()} (YAML reads yes/no/on/off "
                            "as true/false: quote a word such as 'no')")
            continue
        try:
            kwargs[param.name] = None if value is None else param.process_value(ctx, value)
        except typer.BadParameter as err:
            problems.append(f"{path}: {key}: {err.message}")
    if command == "fit" and kwargs.get("strategy") == "auto":
        named = [k for k in _STRATEGY_KEYS if settings.get(k) not in (None, {}) and
                 not (k in params and flagged(params[k]))]
        if named:
            problems.append(f"{path}: {', '.join(named)}: set a named strategy's options, but the strategy is auto "
                            "(which sets its own): leave them out, or name a strategy")
    if data is not None and kwargs.get("data") is None and not Path(data).exists():
        problems.append(f"{path}: data: {data} does not exist; give DATA beside --config, or fix the path")
    if problems:
        _fail(TransferkitError("\n".join(problems)))
    for warning in warnings:
        warn(warning)
    if kwargs.get("data") is None:
        if data is None:
            _fail(TransferkitError(f"{path} records no data path (the run was given data in memory): give DATA "
                                   "beside --config."))
        kwargs["data"] = Path(data)
    return kwargs, extra


def _configurable(command_name: str):
    """Add ``--config run.yaml`` to a command: the file's settings fill every option not given as a flag, and DATA
    when it is left out."""

    def wrap(command):
        signature = inspect.signature(command)
        context = inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
        option = inspect.Parameter(
            "config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
            default=typer.Option(
                None, "--config",
                help=f"A run.yaml (every run writes one into its folder): its settings, data included, for every "
                     f"option not given here; `transferkit {command_name} --config runs/x/run.yaml --out runs/y` "
                     "runs x again into y (the file holds no --out).",
            ),
        )

        @functools.wraps(command)
        def run(*args, ctx: typer.Context, config: Optional[Path] = None, **kwargs):
            extra = {}
            if config is not None:
                kwargs, extra = _apply_config(ctx, command_name, config, kwargs)
            elif kwargs.get("data") is None:
                _fail(TransferkitError(f"Missing DATA: give the data folder or file (`transferkit {command_name} "
                                       "DATA`), or --config run.yaml."))
            token = _EXTRA.set(extra)
            try:
                return command(*args, **kwargs)
            finally:
                _EXTRA.reset(token)

        run.__signature__ = signature.replace(parameters=[*signature.parameters.values(), context, option])
        return run

    return wrap


def _version(value: bool) -> None:
    if value:
        typer.echo(f"transferkit {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    """transferkit: pretrained backbone -> your labels, with evidence."""


@app.command()
@_configurable("fit")
@_limits_images
def fit(
    data: Optional[Path] = typer.Argument(
        None,
        show_default=False,
        help="Folder of class folders of images (also DICOM, NIfTI, 16-bit PNG/TIFF), audio (wav/flac/ogg) or .txt "
             "files (optionally train/ val/ test/), a CSV/TSV/JSONL (path,label for images and audio, plus patient_id "
             "for medical images; text and label columns for texts), a saved Hugging Face dataset, or images with "
             "boxes (COCO JSON, YOLO txt or Pascal VOC XML) for detection.",
    ),
    out: Path = typer.Option(
        Path("runs/latest"), "--out", "-o",
        help="Run folder: model/, metrics.json, plots, report.md; replaced whole when the run ends, keeping what an "
             "earlier run did not write, e.g. notes (checkpoints wait in .NAME.work beside it until then).",
    ),
    backbone: Optional[str] = typer.Option(
        None, "--backbone", "-b",
        help="Registry name, timm:NAME, torchvision:NAME, a Hugging Face encoder (org/name), or a path (see "
             "`transferkit backbones`); several, comma-separated, are ranked by LogME on your data and the first is "
             "trained. Default: efficientnet_lite0 for images and (on log-mel spectrograms) audio, all-MiniLM-L6-v2 "
             "for texts; speaker-encoder for voices.",
    ),
    arch: Optional[str] = typer.Option(
        None,
        help="Architecture of a checkpoint file given as --backbone (timm name or torchvision:NAME).",
    ),
    strategy: str = typer.Option(
        "auto", "--strategy", "-s",
        help="linear, finetune, gradual, scratch or auto; for texts also lora and contrastive; for detection frozen, "
             "finetune, gradual, scratch or auto.",
    ),
    budget: Optional[str] = typer.Option(
        None,
        help="Wall-time budget of the whole run, e.g. 90s, 10m, 1h: reading the data, training, the scratch baseline "
             "(which gets the same training time), scoring and the report. Scoring is timed up front and kept back; "
             "training plans its epochs to finish inside the rest (auto also uses it to decide whether to fine-tune).",
    ),
    epochs: Optional[int] = typer.Option(None, help="Maximum epochs (default: the strategy's own)."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (default: the strategy's own)."),
    batch_size: Optional[int] = typer.Option(None, help="Examples per step (default: the strategy's own)."),
    seed: int = typer.Option(0, help="Seed for splits, folds, initialisation and shuffling."),
    cv: Optional[int] = typer.Option(
        None,
        help="Folds of the stratified cross-validation that chooses settings (the probe's C, epochs, auto's choice) "
             "and estimates the score when no validation split is held out. Default: 5 for the linear probe, 3 where "
             "each fold is a training run (finetune, auto's fine-tuning, lora...).",
    ),
    val_fraction: Optional[float] = typer.Option(
        None,
        help="Hold out this share of the labels for validation. Default: none when the smallest class has fewer than "
             "50 examples (settings then chosen by --cv fold cross-validation on every label), else 0.15. A val/ "
             "folder or split column is always used.",
    ),
    test_fraction: Optional[float] = typer.Option(
        None,
        help="Hold out this share as a test split. Default: none for small data (the score is a cross-validated "
             "estimate; score a separate set with `transferkit evaluate`), else 0.2. A test/ folder or split column is "
             "always used.",
    ),
    skip_bad: bool = typer.Option(
        False, "--skip-bad/--no-skip-bad",
        help="Skip unreadable or missing images, empty texts, undecodable or silent audio, and images with bad boxes "
             "or no label file, with a warning and a count.",
    ),
    precision: str = typer.Option("auto", help="auto (bf16 where the CPU/GPU supports it), bf16, fp16 or no."),
    resume: bool = typer.Option(False, help="Continue an interrupted run into --out from its last epoch checkpoint; "
                                            "refused when the data or a setting that shapes the model differ."),
    image_size: Optional[int] = typer.Option(
        None,
        help="Override the backbone's input resolution (smaller trains faster on a CPU); audio: the spectrogram's "
             "height; detection: the longer image side (default: the training images' median, 128-512).",
    ),
    text_column: Optional[str] = typer.Option(
        None,
        help="Texts: the column holding the text (default: guessed from text, sentence, content, ...).",
    ),
    label_column: Optional[str] = typer.Option(
        None,
        help="Texts: the column holding the label (default: guessed from label, class, category, ...).",
    ),
    label_sep: Optional[str] = typer.Option(
        None,
        help="Multi-label tables (images, audio, texts): cells such as 'sport|politics' are split on this separator "
             "(JSONL lists need none). A folder of class folders gives one label per file.",
    ),
    thresholds: Optional[str] = typer.Option(
        None,
        help="Multi-label: tuned (each label's cut maximises its F1 on validation or out-of-fold predictions; the "
             "default) or one probability for every label, e.g. 0.5.",
    ),
    encoding: str = typer.Option("utf-8", help="Texts: encoding of .txt files (e.g. latin-1, cp1252)."),
    max_length: Optional[int] = typer.Option(
        None,
        help="Texts: override the encoder's token limit (shorter trains faster).",
    ),
    clip_seconds: Optional[float] = typer.Option(
        None,
        help="Audio: window length in seconds (default: the 95th percentile of the training clips' durations); longer "
             "recordings are cut into windows whose predictions are averaged.",
    ),
    task: str = typer.Option(
        "auto",
        help="auto (boxes in the data mean detection), classify, or detect (COCO JSON, YOLO txt or Pascal VOC XML, "
             "detected from the files).",
    ),
    modality: str = typer.Option(
        "auto",
        help="auto, image, text, audio or medical. Medical (automatic for DICOM/NIfTI files or a manifest with a "
             "patient_id column): patient-level splits, class-weighted loss, calibrated probabilities (with 20 "
             "validation examples per class), a tuned threshold, AUROC/sensitivity/specificity and roc.png.",
    ),
    window: Optional[str] = typer.Option(
        None,
        help="DICOM/NIfTI/16-bit images: auto (the file's own window, else its 0.5-99.5 percentiles), full, a CT "
             "preset (lung, mediastinum, soft-tissue, abdomen, liver, bone, brain, subdural, stroke), or centre,width "
             "such as -600,1500.",
    ),
    slices: Optional[str] = typer.Option(
        None,
        help="Volumes (NIfTI, multi-frame DICOM): 2d (the middle slice) or 2.5d (it and its two neighbours as the 3 "
             "channels).",
    ),
    patient_column: Optional[str] = typer.Option(
        None,
        help="Medical: the manifest column of patient ids (default: patient_id, patient, subject_id, subject or "
             "case_id); DICOM folders use PatientID. Ids are hashed at once.",
    ),
    positive: Optional[str] = typer.Option(
        None,
        help="Medical, two classes: the positive class (the finding). Default: the class not named "
             "normal/healthy/negative/benign/0, else the rarer one.",
    ),
    threshold: Optional[str] = typer.Option(
        None,
        help="Medical, two classes: the operating threshold on the positive probability: youden (default, tuned on "
             "validation), sensitivity=0.95, specificity=0.9, or a number.",
    ),
    balance: Optional[str] = typer.Option(
        None,
        help="Class imbalance: weights (class-weighted loss), sampler (classes drawn equally often) or none. Default: "
             "weights when the largest class has over 3x the smallest's examples (medical: always), else none; a "
             "balanced run chooses epochs and models by balanced accuracy. Detection: sampler (images drawn by their "
             "rarest object's class) or none.",
    ),
    scratch_baseline: bool = typer.Option(
        False, "--scratch-baseline/--no-scratch-baseline",
        help="Also train the same architecture from random weights on the same splits and training time (so the run "
             "takes about twice as long), and a classical baseline (HOG, TF-IDF or log-mel statistics + logistic "
             "regression); the report and model card compare them with the model and say plainly when a baseline wins.",
    ),
    workers: Optional[int] = typer.Option(
        None,
        help="Loader processes per training process, as for pretrain (default: 0 on the CPU, where the data are "
             "already decoded in memory; min(8, CPUs - 1) on a GPU).",
    ),
    compile_net: bool = typer.Option(
        False, "--compile/--no-compile",
        help="torch.compile the network that classification fine-tuning trains (finetune, gradual, scratch, auto's "
             "fine-tuning; not detection). The first step compiles: tens of seconds to minutes before training starts "
             "(recorded as compile_s in metrics.json), and again at the first validation and in each fold; it pays "
             "back on long GPU runs, rarely on a CPU.",
    ),
    init_from: Optional[Path] = typer.Option(
        None, "--init-from",
        help="Continue from a bundle (runs/x/model) instead of pretrained weights: its backbone, head and "
             "preprocessing. New classes in DATA get new head rows; the bundle's classes stay classes of the model.",
    ),
    replay: Optional[Path] = typer.Option(
        None, "--replay",
        help="With --init-from: the old training data; --replay-fraction of each old class is mixed into training "
             "(and validation) so old classes are not forgotten. The files the bundle was tested on are left out.",
    ),
    replay_fraction: float = typer.Option(0.25, "--replay-fraction",
                                          help="The share of each old class --replay draws."),
    old_test: Optional[Path] = typer.Option(
        None, "--old-test",
        help="With --init-from: the old task's test data; the report shows the bundle's and the new model's score "
             "on it (accuracy; balanced accuracy or mAP where those choose the model): how much was "
             "forgotten.",
    ),
    l2sp: Optional[float] = typer.Option(
        None, "--l2sp",
        help="Fine-tuning strategies: pull the weights toward their starting point (pretrained, or --init-from's) with "
             "this strength instead of decaying them (L2-SP; try 0.01-1).",
    ),
    log_with: Optional[str] = _log_with_option("the run (settings, each epoch's curves, scores, report and plots)"),
    log_dir: Optional[Path] = _log_dir_option(),
    explain: bool = typer.Option(
        True, "--explain/--no-explain",
        help="Classifiers: the report's maps of what the model looks at (marked words for texts), its shortcut "
             "check and the maps' deletion score (a few seconds).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics summary as JSON on stdout."),
    max_image_pixels: Optional[int] = _max_pixels_option(),
) -> None:
    """Train on DATA and write a bundle, metrics, plots and a report to --out."""
    from .api import fit as fit_api

    options = {k: v for k, v in {"epochs": epochs, "lr": lr, "batch_size": batch_size}.items() if v is not None}
    options = {**_EXTRA.get(), **options}
    if strategy == "auto" and options:
        _fail(TransferkitError("--epochs/--lr/--batch-size apply to a named strategy; auto sets its own "
                               "(use --budget)."))
    try:
        model = fit_api(str(data), backbone=backbone, arch=arch, strategy=strategy, out=out, budget=budget, seed=seed,
                        skip_bad=skip_bad, precision=precision, resume=resume, image_size=image_size,
                        text_column=text_column, label_column=label_column, label_sep=label_sep,
                        thresholds=thresholds, encoding=encoding,
                        max_length=max_length, clip_seconds=clip_seconds, task=task, modality=modality, window=window,
                        slices=slices, patient_column=patient_column, positive=positive, threshold=threshold,
                        balance=balance, scratch_baseline=scratch_baseline, cv=cv, val_fraction=val_fraction,
                        test_fraction=test_fraction, workers=workers, compile=compile_net, explain=explain,
                        init_from=init_from, replay=None if replay is None else str(replay),
                        replay_fraction=replay_fraction, old_test=None if old_test is None else str(old_test),
                        l2sp=l2sp, log_with=log_with, log_dir=log_dir, **options)
    except TransferkitError as err:
        _fail(err)
    m = model.metrics
    scored = "test" if m["test"] else "val"
    if m["task"] == "object-detection":
        _detection_summary(m, scored, out, as_json)
        return
    summary = {
        "strategy": m["strategy"], "scored_on": "cross-validation" if scored == "val" and m.get("estimate") else scored,
        "n": m[scored]["n"],
        "accuracy": round(m[scored]["accuracy"], 4), "macro_f1": round(m[scored]["macro_f1"], 4),
        **({"micro_f1": round(m[scored]["micro_f1"], 4)} if "micro_f1" in m[scored] else {}),
        **({"map": None if m[scored]["map"] is None else round(m[scored]["map"], 4)} if "micro_f1" in m[scored]
           else {}),
        "seconds": round(m["timings"]["total_s"], 1), "report": str(out / "report.md"), "model": str(out / "model"),
    }
    clinical = m[scored].get("clinical")
    if clinical:
        keys = ("auroc", "sensitivity", "specificity", "balanced_accuracy") if clinical.get("positive") else \
            ("auroc_macro", "balanced_accuracy")
        summary |= {k: None if clinical[k] is None else round(clinical[k], 4) for k in keys}
        if clinical.get("positive"):
            summary["threshold"] = m["clinical"]["threshold"]
    if m.get("at_chance"):
        summary["warning"] = m["at_chance"]
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        from .console import results as console

        console.print(
            f"[green]done[/] {summary['strategy']}: {summary['scored_on']} "
            + (f"mAP {'n/a' if summary['map'] is None else format(summary['map'], '.3f')}, exact match "
               if "map" in summary else "accuracy ")
            + f"{summary['accuracy']:.3f}, macro-F1 {summary['macro_f1']:.3f} (n={summary['n']}) in "
              f"{summary['seconds']:.1f}s",
            highlight=False,
        )
        if m.get("estimate"):
            e = m["estimate"]
            ci = f" (95% CI {e['score_ci'][0]:.3f}-{e['score_ci'][1]:.3f})" if e.get("score_ci") else ""
            if scored == "test":
                console.print(f"every label trained the final model; its {e['folds']}-fold cross-validated estimate on "
                              f"them: {e['score']:.3f}{ci}", highlight=False)
            else:
                console.print(f"every label trained the final model; the score{ci} is a {e['folds']}-fold "
                              "cross-validated estimate: `transferkit evaluate` on a separate test set is the "
                              "final word",
                              highlight=False)
        if clinical:
            console.print(_clinical_line(clinical), highlight=False)
        console.print(f"model:  {summary['model']}\nreport: {summary['report']}", highlight=False)
        if m.get("at_chance"):  # the last line: the one a user reads
            console.print(f"[yellow]warning:[/] {m['at_chance']}", highlight=False, soft_wrap=True)


def _clinical_line(c: dict) -> str:
    def f(v):
        return "-" if v is None else f"{v:.3f}"

    if c.get("positive") is None:
        return f"macro AUROC {f(c['auroc_macro'])}, balanced accuracy {f(c['balanced_accuracy'])}"
    return (f"{c['positive']}: AUROC {f(c['auroc'])}, sensitivity {f(c['sensitivity'])}, specificity "
            f"{f(c['specificity'])} at threshold {c['threshold']:.3f}, balanced accuracy {f(c['balanced_accuracy'])}")


def _detection_summary(m: dict, scored: str, out: Path, as_json: bool) -> None:
    s = m[scored]
    summary = {"strategy": m["strategy"], "scored_on": scored, "images": s["n_images"], "boxes": s["n_boxes"],
               "map": s["map"], "map_50": s["map_50"], "seconds": round(m["timings"]["total_s"], 1),
               "report": str(out / "report.md"), "model": str(out / "model")}
    if as_json:
        typer.echo(json.dumps(summary))
        return
    from .console import results as console

    def f(v):
        return "-" if v is None else f"{v:.3f}"

    console.print(f"[green]done[/] {summary['strategy']}: {scored} mAP@[.5:.95] {f(s['map'])}, mAP@.5 {f(s['map_50'])} "
                  f"({s['n_images']} images, {s['n_boxes']} boxes) in {summary['seconds']:.1f}s\n"
                  f"model:  {summary['model']}\nreport: {summary['report']}", highlight=False)


@app.command()
@_limits_images
def predict(
    model_dir: Path = typer.Argument(..., help="A bundle folder (the run's model/)."),
    inputs: Optional[list[str]] = typer.Argument(
        None,
        help="Image files (image models), audio files (audio models: long recordings are windowed and averaged) or "
             "texts (text models) to classify.",
    ),
    file: Optional[list[Path]] = typer.Option(
        None, "--file", "-f",
        help="Text models: a file whose whole content is one text (repeatable).",
    ),
    lines: Optional[Path] = typer.Option(None, "--lines", help="Text models: a file with one text per line."),
    top_k: int = typer.Option(3, "--top-k", "-k", help="How many labels to show per input."),
    as_json: bool = typer.Option(False, "--json", help="JSON lines on stdout."),
    as_csv: bool = typer.Option(
        False, "--csv",
        help="CSV on stdout: path,label,probability (the decision, or the top-1 class), and for multi-label models "
             "labels (every label over its threshold, '|'-separated); detectors: path,label,score,x1,y1,x2,y2 per box.",
    ),
    skip_bad: bool = typer.Option(
        False, "--skip-bad",
        help="Skip unreadable images or empty texts instead of stopping.",
    ),
    draw: Optional[Path] = typer.Option(
        None, "--draw",
        help="Detectors: write the image with its boxes to this PNG (several images: a folder of PNGs).",
    ),
    score_threshold: float = typer.Option(0.3, "--score-threshold", help="Detectors: lowest score shown."),
    explain: Optional[Path] = typer.Option(
        None, "--explain",
        help="Write one explanation per input into this folder (NNN-name.png): the image, or the recording's most "
             "telling spectrogram window, with a map of what the predicted label rests on; texts: NNN-text.html, "
             "the words shaded by their attribution; detectors: the image with its boxes. --json adds each file's "
             "path (explanation).",
    ),
    tta: Optional[bool] = typer.Option(
        None, "--tta/--no-tta",
        help="Image and audio classifiers: average the predictions over test-time views (flips and crops; shifted "
             "windows). Default: as the bundle says (fit keeps it where it helped on validation).",
    ),
    max_image_pixels: Optional[int] = _max_pixels_option(),
) -> None:
    """Top-k labels with probabilities for each image, recording or text; boxes for detectors."""
    from .bundle.detection import DetectionModel
    from .api import load

    try:
        model = load(model_dir)
        if isinstance(model, DetectionModel) and tta:
            raise TransferkitError("--tta applies to image and audio classifiers; this bundle is a detector.")
        if isinstance(model, DetectionModel):
            _predict_boxes(model, list(inputs or []), draw, score_threshold, skip_bad, as_json, as_csv, explain)
            return
        if draw is not None:
            raise TransferkitError("--draw is for detectors: this model classifies.")
        items = list(inputs or [])
        numbered: list[tuple[int, str]] = []
        if file or lines:
            if model.task.inputs != "strings":
                raise TransferkitError(f"--file and --lines are for text models; pass {model.modality} files as "
                                       "arguments.")
            items += [_read_text(f) for f in file or []]
            numbered = [(i + 1, t) for i, t in enumerate(_read_text(lines).splitlines()) if t.strip()] if lines else []
            items += [t for _, t in numbered]
        if not items:
            raise TransferkitError("Nothing to classify: pass images or texts as arguments, or --file/--lines.")
        if model.task.inputs == "strings":
            from .console import warn

            paths = [t for t in inputs or [] if "\n" not in t and os.path.isfile(t)]  # False on any OSError
            if paths:  # a text model classifies the words it is given: here, a file's name
                warn(f"{paths[0]} names a file{f' ({len(paths)} arguments do)' if len(paths) > 1 else ''}: a text "
                     f"model classifies its name, not its content; pass --file {paths[0]} to classify what it holds")
        preds = model.predict(items, top_k=top_k, skip_bad=skip_bad, tta=tta, explain=explain)
        if explain is not None:
            from .console import info

            info(f"explanations: {explain} (one file per input)")
        if model.task.inputs == "strings":  # show where each text came from, not the whole article
            names = [*([_short(t) for t in inputs or []]), *[str(f) for f in file or []]]
            names += [f"{lines}:{n}" for n, _ in numbered]
            if len(preds) == len(names):
                for p, n in zip(preds, names, strict=True):
                    p["input"] = n
    except TransferkitError as err:
        _fail(err)
    if as_json:
        for p in preds:
            typer.echo(json.dumps(p))
    elif as_csv:
        import csv

        w = csv.writer(sys.stdout)
        multi = bool(preds) and "labels" in preds[0]  # multi-label: every label present, "|"-separated
        w.writerow(["path", "label", "probability", *(["labels"] if multi else [])])
        for p in preds:  # the probability of the label given (a medical model's decision may not be the top one)
            prob = p.get("probability", p["top"][0]["probability"])
            w.writerow([p["input"], p["label"], f"{prob:.6f}", *(["|".join(p["labels"])] if multi else [])])
    else:
        from rich.table import Table

        from .console import results as console

        audio = bool(preds) and "windows" in preds[0]  # audio: how many windows each recording averaged
        decided = bool(preds) and "positive_probability" in preds[0]
        multi = bool(preds) and "labels" in preds[0]  # multi-label: the labels at or above their thresholds
        table = Table("input", *(["windows"] if audio else []), *(["decision"] if decided else []),
                      *(["labels"] if multi else []),
                      *[f"#{i + 1}" for i in range(len(preds[0]["top"]) if preds else 0)])
        for p in preds:
            table.add_row(p["input"], *([str(p["windows"])] if audio else []), *([p["label"]] if decided else []),
                          *([", ".join(p["labels"]) or "(none)"] if multi else []),
                          *[f"{t['label']} {t['probability']:.3f}" for t in p["top"]])
        console.print(table)
        if decided:
            c = model.clinical
            kind = "calibrated probability" if c.get("calibrated", True) else "probability"
            console.print(f"decision: {c['positive']} when its {kind} is at least {c['threshold']:.3f} "
                          f"({c['threshold_rule']})", highlight=False)


def _predict_boxes(model, items: list[str], draw: Optional[Path], threshold: float, skip_bad: bool, as_json: bool,
                   as_csv: bool, explain: Optional[Path] = None) -> None:
    """Detector output: JSON lines (or CSV rows, or a table) of boxes per image, and drawn PNGs with --draw (and
    with --explain, a folder of them named as classifiers' explanations are, their paths in the JSON)."""
    if not items:
        raise TransferkitError("Nothing to detect: pass image files as arguments.")
    if explain is not None:
        from .evaluation.explain_plots import explanation_folder, explanation_name

        explain = explanation_folder(explain)  # refused before any work
    preds = model.predict(items, score_threshold=threshold, skip_bad=skip_bad)
    if explain is not None:
        for i, p in enumerate(preds):
            p["explanation"] = str(explain / f"{explanation_name(i, Path(p['input']))}.png")
            model.draw(p["input"], Path(p["explanation"]), score_threshold=threshold)
        from .console import info

        info(f"explanations (the images with their boxes): {explain}")
    if draw is not None:
        if len(preds) == 1 and draw.suffix.lower() == ".png":
            targets = [draw]
        elif draw.suffix.lower() == ".png" or draw.is_file():
            raise TransferkitError(f"--draw {draw} is a file name, but there are {len(items)} images: give a folder.")
        else:  # one PNG per image, named after it; a repeated name gets the image's position too
            stems = [Path(p["input"]).stem for p in preds]
            targets = [draw / (f"{s}.png" if stems.count(s) == 1 else f"{s}-{i + 1}.png") for i, s in enumerate(stems)]
        for p, target in zip(preds, targets, strict=True):
            model.draw(p["input"], target, score_threshold=threshold)
        from .console import info

        info(f"drawn: {targets[0] if len(targets) == 1 else draw}")
    if as_json:
        for p in preds:
            typer.echo(json.dumps(p))
    elif as_csv:
        import csv

        w = csv.writer(sys.stdout)
        w.writerow(["path", "label", "score", "x1", "y1", "x2", "y2"])
        for p in preds:
            for b in p["boxes"]:
                w.writerow([p["input"], b["label"], f"{b['score']:.4f}", *b["box"]])
    else:
        from rich.table import Table

        from .console import results as console

        table = Table("input", "boxes", "detections (label score [x1, y1, x2, y2])")
        for p in preds:
            shown = "; ".join(f"{b['label']} {b['score']:.2f} {b['box']}" for b in p["boxes"][:5])
            more = f" (+{len(p['boxes']) - 5} more)" if len(p["boxes"]) > 5 else ""
            table.add_row(p["input"], str(len(p["boxes"])), shown + more)
        console.print(table)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TransferkitError(f"{path} does not exist: check the path.") from None
    except UnicodeDecodeError:
        raise TransferkitError(f"{path} is not UTF-8 text: re-save it as UTF-8.") from None


def _short(text: str, n: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= n else flat[: n - 3] + "..."


@app.command()
@_limits_images
def evaluate(
    model_dir: Path = typer.Argument(..., help="A bundle folder (the run's model/)."),
    data: Path = typer.Argument(
        ...,
        help="Labelled data: class folders (its test/ if present) or a CSV/TSV/JSONL (its test rows if it has a split "
             "column); for detectors, images with boxes (COCO/YOLO/VOC; its test split if present).",
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o",
        help="Write metrics.json (and, for classifiers, confusion_matrix.png) here.",
    ),
    skip_bad: bool = typer.Option(
        False, "--skip-bad",
        help="Skip unreadable images or audio, or empty texts, with a warning.",
    ),
    text_column: Optional[str] = typer.Option(None, help="Texts: the column holding the text."),
    label_column: Optional[str] = typer.Option(None, help="Texts: the column holding the label."),
    label_sep: Optional[str] = typer.Option(
        None,
        help="Multi-label tables: separator of the label cells (default: the one used in training).",
    ),
    encoding: str = typer.Option("utf-8", help="Texts: encoding of .txt files."),
    as_json: bool = typer.Option(False, "--json", help="Print all metrics as JSON on stdout."),
    tta: Optional[bool] = typer.Option(
        None, "--tta/--no-tta",
        help="Image and audio classifiers: average the predictions over test-time views (flips and crops; shifted "
             "windows). Default: as the bundle says (fit keeps it where it helped on validation).",
    ),
    max_image_pixels: Optional[int] = _max_pixels_option(),
) -> None:
    """Score a saved model on labelled images, audio or texts (detectors: COCO mAP on images with boxes)."""
    from .bundle.detection import DetectionModel
    from .api import load

    try:
        model = load(model_dir)
        if isinstance(model, DetectionModel) and tta:
            raise TransferkitError("--tta applies to image and audio classifiers; this bundle is a detector.")
        given = {"text_column": text_column, "label_column": label_column, "encoding": encoding,
                 "label_sep": label_sep}
        if tta is not None and not isinstance(model, DetectionModel):
            given["tta"] = tta
        reading = getattr(model, "task", None)
        reading = reading.reading_options if reading is not None else ()
        m = model.evaluate(str(data), skip_bad=skip_bad,
                           **{k: v for k, v in given.items() if (k in reading or k == "tta") and v is not None})
    except TransferkitError as err:
        _fail(err)
    if isinstance(model, DetectionModel):
        if out is not None:
            from .io import write_json

            write_json(out / "metrics.json", m)
        if as_json:
            typer.echo(json.dumps(m))
            return
        _print_detection_metrics(m)
        return
    if out is not None:
        from .io import write_json
        from .evaluation.plots import confusion_matrix_png

        write_json(out / "metrics.json", m)
        if "confusion_matrix" in m:
            confusion_matrix_png(m["confusion_matrix"], model.classes, out / "confusion_matrix.png",
                                 f"Confusion matrix (n={m['n']})")
    if as_json:
        typer.echo(json.dumps(m))
        return
    from rich.table import Table

    from .console import results as console

    if m.get("multi_label"):
        mean_ap = "n/a" if m.get("map") is None else f"{m['map']:.3f}"
        console.print(f"macro-F1 [bold]{m['macro_f1']:.3f}[/], micro-F1 {m['micro_f1']:.3f}, mAP {mean_ap}, exact "
                      f"match {m['accuracy']:.3f}, Hamming score {m['hamming_score']:.3f} (n={m['n']})",
                      highlight=False)
    else:
        console.print(f"accuracy [bold]{m['accuracy']:.3f}[/], macro-F1 {m['macro_f1']:.3f}, log-loss "
                      f"{m['log_loss']:.3f} (n={m['n']})", highlight=False)
    if m.get("clinical"):
        console.print(_clinical_line({**m["clinical"], "threshold": model.clinical["threshold"]}), highlight=False)
    table = Table("class", "precision", "recall", "F1", "support")
    for c, v in m["per_class"].items():
        table.add_row(c, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", str(v["support"]))
    console.print(table)


@app.command()
@_limits_images
def export(
    model_dir: Path = typer.Argument(..., help="A bundle folder (the run's model/)."),
    out: Path = typer.Option(
        ..., "--out", "-o",
        help="The folder to write: new, empty, or an earlier export (replaced whole once the new one is checked).",
    ),
    format: str = typer.Option("onnx", "--format", help="What to export to: onnx."),
    check: Optional[list[str]] = typer.Option(
        None, "--check",
        help="Inputs to check the export on (repeatable: files; or one labelled folder or CSV/TSV/JSONL, which "
             "--quantize needs; detectors: images, a folder, or an annotated folder or COCO file); default: the test "
             "files the bundle recorded. Texts: a file with one text per line, or labelled texts.",
    ),
    quantize: Optional[str] = typer.Option(
        None, "--quantize",
        help="int8: model.onnx becomes INT8 (static, calibrated on training inputs, for CNNs and detectors; dynamic "
             "for text encoders), refused when it scores more than --max-drop below fp32 on labelled check data.",
    ),
    max_drop: float = typer.Option(
        0.01, "--max-drop",
        help="Largest accuracy (binary medical: AUROC; detectors: mAP) that INT8 may lose against fp32, 0-1.",
    ),
    calibration: Optional[list[str]] = typer.Option(
        None, "--calibration",
        help="Images or recordings to calibrate INT8 with (repeatable, or one folder); default: the training files "
             "the bundle recorded.",
    ),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable check inputs with a warning."),
    as_json: bool = typer.Option(False, "--json", help="Print export.json on stdout."),
    max_image_pixels: Optional[int] = _max_pixels_option(),
) -> None:
    """Export a model to a self-contained ONNX folder (model.onnx, labels, preprocessing, a reference predict.py)
    after checking that onnxruntime gives PyTorch's probabilities (within 1e-4; detectors: the same boxes) on real
    inputs; optionally INT8, with its score set beside fp32's."""
    from .api import load

    try:
        model = load(model_dir)
        from .export.onnx import is_labelled

        given: object = None
        if check and len(check) == 1 and is_labelled(check[0]):
            given = check[0]  # labelled: class folders or a table, read as evaluate reads it
        elif check and getattr(getattr(model, "task", None), "inputs", "files") == "strings":
            if len(check) != 1 or not Path(check[0]).is_file():
                raise TransferkitError("Text models: --check takes one file with one text per line, or labelled "
                                       "texts (a folder, CSV/TSV/JSONL).")
            given = [t for t in _read_text(Path(check[0])).splitlines() if t.strip()]
        elif check:
            given = list(check)
        calib: object = None
        if calibration:
            calib = calibration[0] if len(calibration) == 1 and is_labelled(calibration[0]) else list(calibration)
        meta = model.export(out, format=format, check=given, skip_bad=skip_bad, quantize=quantize,
                            max_drop=max_drop, calibration=calib)
    except TransferkitError as err:
        _fail(err)
    if as_json:
        typer.echo(json.dumps(meta))


@app.command()
@_limits_images
def serve(
    model_dir: Path = typer.Argument(..., help="A bundle folder (the run's model/), or a folder written by transferkit "
                                                "export (run with onnxruntime)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; other than loopback needs --token."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    token: Optional[str] = typer.Option(
        None, "--token", envvar="TRANSFERKIT_TOKEN",
        help="Bearer token every request must send (Authorization: Bearer TOKEN); or set TRANSFERKIT_TOKEN.",
    ),
    max_batch: int = typer.Option(32, "--max-batch", help="Most inputs predicted together."),
    batch_window_ms: float = typer.Option(
        5.0, "--batch-window-ms", help="How long the first request of a batch waits for others (ms)."),
    max_body_mb: float = typer.Option(10.0, "--max-body-mb", help="Largest request body (MB)."),
    max_items: int = typer.Option(64, "--max-items", help="Most inputs in one request."),
    max_audio_seconds: float = typer.Option(600.0, "--max-audio-seconds", help="Longest recording accepted (s)."),
    max_text_chars: int = typer.Option(100_000, "--max-text-chars", help="Longest text accepted (characters)."),
    read_timeout: float = typer.Option(
        30.0, "--read-timeout", help="Seconds a request's body may stall before it is answered 408."),
    max_image_pixels: Optional[int] = _max_pixels_option(skips=False),
) -> None:
    """Serve a model over HTTP (FastAPI + uvicorn): POST /predict (files as multipart, texts as JSON), GET /health,
    /metadata, /docs. Requests arriving together are predicted as one batch; SIGTERM lets those in flight finish."""
    from .serving.app import Limits, serve as run_server

    from .errors import check_number

    try:
        for name, value in (("--max-batch", max_batch), ("--max-items", max_items), ("--max-text-chars",
                                                                                   max_text_chars)):
            if value < 1:
                raise TransferkitError(f"{name} is {value}: give 1 or more.")
        check_number("--batch-window-ms", batch_window_ms, low=0, high=10_000, example="5")
        check_number("--max-body-mb", max_body_mb, low=0.001, high=10_000, example="10")
        check_number("--max-audio-seconds", max_audio_seconds, low=0.1, high=86_400, example="600")
        check_number("--read-timeout", read_timeout, low=0.1, high=3600, example="30")
        run_server(model_dir, host=host, port=port, token=token, max_batch=max_batch, window_ms=batch_window_ms,
                   limits=Limits(max_body_mb=max_body_mb, max_items=max_items, max_text_chars=max_text_chars,
                                 max_audio_seconds=max_audio_seconds, read_timeout=read_timeout))
    except TransferkitError as err:
        _fail(err)


def _print_detection_metrics(m: dict) -> None:
    from rich.table import Table

    from .console import results as console

    def f(v):
        return "-" if v is None else f"{v:.3f}"

    console.print(f"mAP@[.5:.95] [bold]{f(m['map'])}[/], mAP@.5 {f(m['map_50'])}, mAP@.75 {f(m['map_75'])} "
                  f"({m['n_images']} images, {m['n_boxes']} boxes)", highlight=False)
    table = Table("class", "AP@[.5:.95]", "AP@.5", "boxes", "found", "missed", "false alarms")
    for c, v in m["per_class"].items():
        table.add_row(c, f(v["ap"]), f(v["ap_50"]), str(v["boxes"]), str(v["found"]), str(v["missed"]),
                      str(v["false_alarms"]))
    console.print(table)


@app.command()
@_limits_images
def rank(
    data: Path = typer.Argument(
        ...,
        help="Labelled data, as for fit (images, DICOM/NIfTI, texts or audio; multi-label: ranked by LogME alone).",
    ),
    backbones_list: str = typer.Option(
        ..., "--backbones",
        help="Comma-separated backbones to compare (registry names, timm:NAME, paths ...).",
    ),
    validate: bool = typer.Option(
        False, "--validate",
        help="Also fine-tune each backbone briefly and report each score's weighted Kendall tau with the fine-tuned "
             "validation score.",
    ),
    budget: Optional[str] = typer.Option(None, help="--validate: wall-time budget of each fine-tuning run, e.g. 2m."),
    epochs: Optional[int] = typer.Option(None, help="--validate: maximum fine-tuning epochs per backbone."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write rank.json and rank.md here."),
    image_size: Optional[int] = typer.Option(None, help="Override every image backbone's input resolution."),
    seed: int = typer.Option(0, help="Seed for the split (and the fine-tuning with --validate)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable files with a warning."),
    label_sep: Optional[str] = typer.Option(
        None, "--label-sep",
        help="Multi-label tables: the separator of the label cells, as for fit (JSONL lists need none).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    max_image_pixels: Optional[int] = _max_pixels_option(),
) -> None:
    """Rank backbones for DATA by transferability scores from frozen features (LogME, LEEP, NCE, H-score, k-NN)."""
    from .api import rank as rank_api
    from .ranking import render

    try:
        result = rank_api(str(data), backbones_list.split(","), validate=validate, budget=budget, out=out, seed=seed,
                          skip_bad=skip_bad, image_size=image_size, label_sep=label_sep,
                          **({"epochs": epochs} if epochs is not None else {}))
    except TransferkitError as err:
        _fail(err)
    if as_json:
        typer.echo(json.dumps(result))
        return
    from .console import results as console

    console.print(render(result), highlight=False, markup=False)


@app.command()
@_configurable("search")
@_limits_images
def search(
    data: Optional[Path] = typer.Argument(
        None, show_default=False, help="Labelled data, as for fit (images, DICOM/NIfTI, texts or audio).",
    ),
    trials: Optional[int] = typer.Option(
        None, "--trials", "-n",
        help="Trials the study holds (default 20 when this command creates it; a joining --worker may leave it out).",
    ),
    budget: Optional[str] = typer.Option(
        None, help="Wall time of the whole search, final model included, e.g. 1h or 30m; trials stop when the next "
                   "would not leave time for the last two runs.",
    ),
    storage: Optional[str] = typer.Option(
        None, help="Where the study lives: sqlite:///path/search.db (default: search.db beside --out) or "
                   "postgresql://user@host/db for workers on several machines.",
    ),
    study: Optional[str] = typer.Option(None, help="The study's name (default: --out's folder name)."),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="The final model's run folder (bundle, report, search.json, search.png).",
    ),
    strategy: str = typer.Option(
        "auto", "--strategy", "-s",
        help="One strategy or several (linear,finetune); auto searches linear and finetune.",
    ),
    space: Optional[Path] = typer.Option(
        None, help="A YAML file changing the declared search spaces, e.g. 'finetune: {lr: {low: 1.0e-5, high: "
                   "1.0e-3, log: true}}'.",
    ),
    pruner: str = typer.Option("median", help="median, halving or none."),
    workers: int = typer.Option(1, help="Processes on this machine sharing the study (each gets its share of the "
                                        "cores)."),
    worker: bool = typer.Option(False, "--worker", help="Only run trials of the study (another process trains the "
                                                        "final model)."),
    heartbeat: float = typer.Option(
        10.0, help="Seconds between a running trial's heartbeats; a trial silent for 3 is failed and run again.",
    ),
    backbone: Optional[str] = typer.Option(None, "--backbone", "-b", help="The backbone, as for fit."),
    seed: int = typer.Option(0, help="Seed of the sampler, the splits, folds and training."),
    cv: Optional[int] = typer.Option(None, help="Folds of the cross-validated objective (small data), as for fit."),
    val_fraction: Optional[float] = typer.Option(None, help="Hold out a validation split, as for fit."),
    test_fraction: Optional[float] = typer.Option(
        None, help="Without a given test set: the share held out to compare the searched and default settings "
                   "(default 0.2); trials never see it.",
    ),
    image_size: Optional[int] = typer.Option(None, help="Override the backbone's input resolution, as for fit."),
    modality: str = typer.Option("auto", help="auto, image, text, audio or medical, as for fit."),
    text_column: Optional[str] = typer.Option(None, help="Texts: the column holding the text, as for fit."),
    label_column: Optional[str] = typer.Option(None, help="Texts: the column holding the label, as for fit."),
    label_sep: Optional[str] = typer.Option(None, "--label-sep", help="Multi-label tables: the label separator."),
    max_length: Optional[int] = typer.Option(None, help="Texts: override the encoder's token limit."),
    clip_seconds: Optional[float] = typer.Option(None, help="Audio: window length in seconds, as for fit."),
    window: Optional[str] = typer.Option(None, help="DICOM/NIfTI/16-bit images: the intensity window, as for fit."),
    slices: Optional[str] = typer.Option(None, help="Volumes: 2d or 2.5d, as for fit."),
    patient_column: Optional[str] = typer.Option(None, help="Medical: the manifest column of patient ids, as for fit."),
    balance: Optional[str] = typer.Option(None, help="Class imbalance: weights, sampler or none, as for fit."),
    precision: str = typer.Option("auto", help="auto, bf16, fp16 or no, as for fit."),
    skip_bad: bool = typer.Option(False, "--skip-bad/--no-skip-bad", help="Skip unreadable files with a warning."),
    explain: bool = typer.Option(True, "--explain/--no-explain", help="The final model's explanations, as for fit."),
    log_with: Optional[str] = _log_with_option("the search (each trial's value, then the final run)"),
    log_dir: Optional[Path] = _log_dir_option(),
    as_json: bool = typer.Option(False, "--json", help="Print the search's record as JSON on stdout."),
    max_image_pixels: Optional[int] = _max_pixels_option(),
) -> None:
    """Search the training settings on DATA with Optuna under a budget, then train the final model with the best.

    Several workers share one study: start `transferkit search DATA --study NAME --storage URL --worker` on other
    machines (or --workers N here); exactly --trials finish, and a dead worker's trial runs again elsewhere.
    """
    from .studies import search as search_api

    extra = {k: v for k, v in (("text_column", text_column), ("label_column", label_column),
                                ("label_sep", label_sep), ("max_length", max_length), ("clip_seconds", clip_seconds),
                                ("window", window), ("slices", slices), ("patient_column", patient_column),
                                ("balance", balance)) if v is not None}
    try:
        result = search_api(str(data), trials=trials, budget=budget, storage=storage, study=study, out=out,
                            strategy=strategy, space=None if space is None else str(space), pruner=pruner, seed=seed,
                            workers=workers, worker=worker, heartbeat=heartbeat, backbone=backbone, modality=modality,
                            val_fraction=val_fraction, test_fraction=test_fraction, cv=cv, image_size=image_size,
                            precision=precision, skip_bad=skip_bad, explain=explain, log_with=log_with,
                            log_dir=log_dir, **extra)
    except TransferkitError as err:
        _fail(err)
    except KeyboardInterrupt:
        typer.echo("interrupted: the running trial is queued again; run the same command to go on", err=True)
        raise typer.Exit(130) from None
    from .console import results as console

    if worker:
        summary = {"worker": True, **result}
        if as_json:
            typer.echo(json.dumps(summary))
        else:
            console.print(f"worker done: {result['complete']} complete, {result['pruned']} pruned, "
                          f"{result['failed']} failed", highlight=False)
        return
    s = result.metrics["search"]
    if as_json:
        typer.echo(json.dumps(s, default=str))
        return
    t, best = s["trials"], s["best"]
    console.print(f"[green]done[/] search: {t['complete']} complete, {t['pruned']} pruned, {t['failed']} failed of "
                  f"{t['planned']} trials; best {s['metric']} {best['value']:.3f} (trial {best['number']}, "
                  f"{best['strategy']})", highlight=False)
    c = s.get("comparison")
    if c:
        console.print(f"test {s['metric']}: searched {c['searched']:.3f} vs defaults {c['defaults']:.3f} "
                      f"({c['difference']:+.3f}, 95% CI {c['ci'][0]:+.3f} to {c['ci'][1]:+.3f}): {c['verdict']}",
                      highlight=False)
    console.print(f"model:  {out / 'model'}\nreport: {out / 'report.md'}", highlight=False)


@app.command()
@_configurable("compare")
@_limits_images
def compare(
    data: Optional[Path] = typer.Argument(
        None,
        show_default=False,
        help="Labelled data, as for fit (images, DICOM/NIfTI, texts or audio; single- or multi-label).",
    ),
    budgets: str = typer.Option(
        "5,10,25,50,all",
        help="Label budgets: labelled examples per class (validation included), comma-separated; 'all' is the whole "
             "pool.",
    ),
    seeds: int = typer.Option(
        3,
        help="Seeds per budget and strategy (which examples are labelled, initialisation, shuffling); 3 or more give a "
             "95% interval.",
    ),
    strategies: str = typer.Option(
        "linear,finetune,scratch",
        help="Comma-separated strategies; include scratch for the headline comparisons, and classical for the non-deep "
             "baseline (HOG, TF-IDF or log-mel statistics + logistic regression).",
    ),
    out: Path = typer.Option(
        Path("runs/compare"), "--out", "-o",
        help="results.csv, summary.csv, compare.json, plots, report.md and report.html.",
    ),
    backbone: Optional[str] = typer.Option(
        None, "--backbone", "-b",
        help="The backbone of every transfer run (scratch: its architecture). Default as for fit.",
    ),
    metric: str = typer.Option(
        "auto",
        help="accuracy, balanced_accuracy, macro_f1 or auroc (two-class medical); multi-label: map, macro_f1, micro_f1 "
             "or accuracy (exact match). auto: accuracy, AUROC / balanced accuracy for medical data, mAP for "
             "multi-label data.",
    ),
    time_per_run: Optional[str] = typer.Option(None, help="Wall-time budget of each run, e.g. 2m."),
    epochs: Optional[int] = typer.Option(None, help="Maximum epochs of each run (default: each strategy's own)."),
    image_size: Optional[int] = typer.Option(
        None,
        help="Override the backbone's input resolution (smaller trains faster on a CPU).",
    ),
    modality: str = typer.Option("auto", help="auto, image, text, audio or medical, as for fit."),
    max_length: Optional[int] = typer.Option(
        None,
        help="Texts: override the encoder's token limit (shorter trains faster).",
    ),
    text_column: Optional[str] = typer.Option(None, help="Texts: the column holding the text, as for fit."),
    label_column: Optional[str] = typer.Option(None, help="Texts: the column holding the label, as for fit."),
    patient_column: Optional[str] = typer.Option(
        None,
        help="Medical: the manifest column of patient ids, as for fit; budgets then draw whole patients.",
    ),
    precision: str = typer.Option("auto", help="auto, bf16, fp16 or no, as for fit."),
    seed: int = typer.Option(0, help="Seed of the fixed test split (when the data have none)."),
    val_fraction: float = typer.Option(0.15, help="The share of each budget's labels each run validates on."),
    test_fraction: float = typer.Option(0.2, help="The share held out once as the test set, when the data have no "
                                                  "test split."),
    resume: bool = typer.Option(False, help="Reuse the runs an interrupted comparison in --out already finished."),
    skip_bad: bool = typer.Option(False, "--skip-bad/--no-skip-bad", help="Skip unreadable files with a warning."),
    label_sep: Optional[str] = typer.Option(
        None, "--label-sep",
        help="Multi-label tables: the separator of the label cells, as for fit (JSONL lists need none).",
    ),
    log_with: Optional[str] = _log_with_option("the comparison (each run's score, the summary and plots)"),
    log_dir: Optional[Path] = _log_dir_option(),
    storage: Optional[str] = typer.Option(
        None, help="Spread the runs over workers through a study in this database: sqlite:///path.db (one machine; the "
                   "default with --workers above 1: compare.db beside --out) or postgresql://user@host/db.",
    ),
    study: Optional[str] = typer.Option(None, help="The study's name (default: --out's folder name)."),
    workers: int = typer.Option(1, help="Processes on this machine taking runs from the study."),
    worker: bool = typer.Option(False, "--worker", help="Only take runs from the study (the process with --out "
                                                        "collects and reports)."),
    heartbeat: float = typer.Option(10.0, help="Seconds between a running run's heartbeats; a run silent for 3 is run "
                                               "again."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    max_image_pixels: Optional[int] = _max_pixels_option(),
) -> None:
    """Measure transfer against scratch on DATA: every budget x seed x strategy scored on one fixed test set."""
    from .comparison import compare as compare_api

    try:
        result = compare_api(str(data), budgets=budgets, seeds=seeds, strategies=strategies, backbone=backbone,
                             metric=metric, time_per_run=time_per_run, out=None if worker else out, resume=resume,
                             seed=seed, log_with=log_with, log_dir=log_dir, storage=storage,
                             study=study or (out.name if worker else None), workers=workers,
                             worker=worker, heartbeat=heartbeat,
                             skip_bad=skip_bad, image_size=image_size, modality=modality, precision=precision,
                             val_fraction=val_fraction, test_fraction=test_fraction,
                             **_EXTRA.get(),
                             **{k: v for k, v in (("epochs", epochs), ("max_length", max_length),
                                                  ("text_column", text_column), ("label_column", label_column),
                                                  ("patient_column", patient_column), ("label_sep", label_sep))
                                if v is not None})
    except TransferkitError as err:
        _fail(err)
    if result is None:  # a worker: the process with --out reports
        typer.echo(json.dumps({"worker": True}) if as_json else "worker done: no runs left in the study")
        return
    if as_json:
        typer.echo(json.dumps(result, default=str))
        return
    from .console import results as console

    for key in ("time", "labels", "gap"):
        console.print(f"- {result['headlines'][key]['sentence']}", highlight=False, markup=False)
    if "files" in result:  # only the main process writes
        console.print(f"report: {result['files']['html']}", highlight=False, markup=False)


@app.command()
@_configurable("pretrain")
@_limits_images
def pretrain(
    data: Optional[Path] = typer.Argument(
        None,
        show_default=False,
        help="Supervised: class folders of images or a CSV/TSV/JSONL of path,label. SimCLR: any folder of images (at "
             "any depth) or a table of paths. MLM/SimCSE: a .txt file (one document per line), a .jsonl with a text "
             "field, or a folder of .txt files. Read as training goes, never all at once.",
    ),
    method: str = typer.Option(
        "supervised",
        help="supervised (labelled images), simclr (unlabelled images, contrastive), mlm (unlabelled texts, "
             "masked-language model) or simcse (unlabelled texts, contrastive sentence embeddings).",
    ),
    arch: Optional[str] = typer.Option(
        None,
        help="Image architecture to train from random weights: a registry name (efficientnet_lite0), timm:NAME or "
             "torchvision:NAME. Default for supervised: efficientnet_lite0.",
    ),
    init: Optional[str] = typer.Option(
        None,
        help="Backbone whose pretrained weights are the start (domain-adaptive pre-training), e.g. efficientnet_lite0, "
             "all-MiniLM-L6-v2 or a backbone folder. Texts default to all-MiniLM-L6-v2.",
    ),
    out: Path = typer.Option(
        Path("backbones/latest"), "--out", "-o",
        help="Backbone folder, written when training ends (checkpoints under OUT/checkpoints meanwhile); pass it to "
             "fit --backbone.",
    ),
    epochs: Optional[int] = typer.Option(
        None,
        help="Passes over the data (default: supervised 10, simclr 20, mlm 3, simcse 1).",
    ),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps instead of --epochs."),
    batch_size: Optional[int] = typer.Option(
        None,
        help="Global batch (all processes together; default: 128 for images, 32 mlm, 64 simcse).",
    ),
    lr: Optional[float] = typer.Option(
        None,
        help="Peak AdamW learning rate (default: per method, lower from a pretrained start).",
    ),
    weight_decay: Optional[float] = typer.Option(None, help="AdamW weight decay (default: per method)."),
    image_size: Optional[int] = typer.Option(None, help="Images: input resolution (default: the architecture's)."),
    max_length: Optional[int] = typer.Option(
        None,
        help="Texts: tokens per example, a window of each document (default: mlm 128, simcse 64).",
    ),
    val_fraction: float = typer.Option(
        0.05,
        help="Supervised: share of images held out and scored after each epoch (0: none).",
    ),
    label_smoothing: float = typer.Option(
        0.0,
        help="Supervised: label smoothing of the source targets (0 keeps the features most transferable).",
    ),
    checkpoint_every: int = typer.Option(200, help="Steps between checkpoints (one is also written after each epoch)."),
    log_every: int = typer.Option(50, help="Steps between log lines (loss, metric, samples/s, ETA)."),
    resume: bool = typer.Option(
        False,
        help="Continue from OUT/checkpoints after an interruption (also kill -9); the result is the same as without "
             "one.",
    ),
    seed: int = typer.Option(0, help="Seed for initialisation, order, augmentation and masking."),
    precision: str = typer.Option("auto", help="auto (bf16 where the CPU/GPU supports it), bf16, fp16 or no."),
    workers: Optional[int] = typer.Option(
        None,
        help="Loader processes per training process that read and decode data (default: from the CPU count).",
    ),
    skip_bad: bool = typer.Option(
        False, "--skip-bad/--no-skip-bad",
        help="Labelled images: skip files that are not images, with a count.",
    ),
    encoding: str = typer.Option("utf-8", help="Texts: file encoding."),
    log_with: Optional[str] = _log_with_option("the pre-training (settings, each logged step and evaluation)"),
    log_dir: Optional[Path] = _log_dir_option(),
    as_json: bool = typer.Option(False, "--json", help="Print a summary as JSON on stdout."),
    max_image_pixels: Optional[int] = _max_pixels_option(),
) -> None:
    """Pre-train a backbone on DATA (a source task, or your unlabelled in-domain data) and write it to --out.

    Scales unchanged: `accelerate launch --num_processes N -m transferkit pretrain ...` or `torchrun --nproc_per_node N
    -m transferkit pretrain ...` shards the data over the processes; only the first writes.
    """
    from .pretraining import pretrain as pretrain_api

    try:
        result = pretrain_api(str(data), method=method, arch=arch, init=init, out=out, epochs=epochs, steps=steps,
                              batch_size=batch_size, lr=lr, weight_decay=weight_decay, image_size=image_size,
                              max_length=max_length, val_fraction=val_fraction, label_smoothing=label_smoothing,
                              checkpoint_every=checkpoint_every,
                              log_every=log_every, resume=resume, seed=seed, precision=precision, workers=workers,
                              skip_bad=skip_bad, encoding=encoding, log_with=log_with, log_dir=log_dir)
    except TransferkitError as err:
        _fail(err)
    m = result.metrics
    last = m["record"]["log"][-1]
    summary = {"method": m["method"], "backbone": str(out), "steps": m["total_steps"], "processes": m["processes"],
               "loss": round(last["loss"], 4), m["metric"]: round(last["metric"], 4),
               "samples_per_s": round(m["samples_per_s"], 1), "seconds": round(m["seconds"], 1)}
    if m["record"]["evaluations"]:
        summary["val_accuracy"] = round(m["record"]["evaluations"][-1]["val_accuracy"], 4)
    from .engine.accel import is_main_process

    if not is_main_process():  # under a launcher, the first process reports
        return
    if as_json:
        typer.echo(json.dumps(summary))
        return
    from .console import results as console

    console.print(f"[green]done[/] {m['method']}: {m['total_steps']} steps on {m['processes']} process(es), "
                  f"{summary['samples_per_s']} samples/s, loss {summary['loss']}"
                  + (f", validation accuracy {summary['val_accuracy']:.3f}" if "val_accuracy" in summary else ""),
                  highlight=False)
    console.print(f"backbone: {out}  (transferkit fit DATA --backbone {out})\nreport:   {out / 'report.md'}",
                  highlight=False)


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

    table = Table("name", "for", "status", "description")
    for r in rows:
        table.add_row(r["name"], r["modality"], ("[green]" if r["offline"] else "[yellow]") + r["status"],
                      r["description"])
    console.print(table)
    console.print("Any timm model (timm:NAME) or torchvision model (torchvision:NAME) also works when its weights "
                  "can be downloaded, and so does a checkpoint file with --arch. For texts and audio, any Hugging Face "
                  "encoder (org/name or hf:org/name) or a local model folder. With audio data, every image backbone "
                  "runs on log-mel spectrograms.", highlight=False)


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Run folder."),
    data_dir: Path = typer.Option(Path("data/fashion-mnist-10"), help="Where the demo images are written."),
    per_class: int = typer.Option(10, help="Labelled training images per class."),
    test_size: int = typer.Option(1000, help="Images from the official test set to score on."),
    budget: Optional[str] = typer.Option(
        None,
        help="Wall-time budget of the whole run (default 3m; 6m for --detect).",
    ),
    text: bool = typer.Option(
        False, "--text",
        help="BBC News topics instead: 8 articles per class, all-MiniLM-L6-v2, 500 held-out articles.",
    ),
    audio: bool = typer.Option(
        False, "--audio",
        help="Spoken digits instead (espeak-ng voices, disjoint train/test speakers): 20 clips per digit, "
             "EfficientNet-Lite0 on log-mel spectrograms.",
    ),
    detect: bool = typer.Option(
        False, "--detect",
        help="Object detection instead: Fashion-MNIST garments composed onto photos (COCO boxes), 200 train / 100 test "
             "images, FCOS on EfficientNet-Lite0.",
    ),
    multilabel: bool = typer.Option(
        False, "--multilabel",
        help="Multi-label images instead: 2-3 Fashion-MNIST garments per photo, labelled by which are present, 200 "
             "train / 100 test images (per-class and test-size settings do not apply).",
    ),
    medical: bool = typer.Option(
        False, "--medical",
        help="Medical-style imaging instead: ELPV solar-cell electroluminescence images (greyscale; pip install "
             "'transferkit[datasets]'), 200 labelled cells, defective vs functional, clinical metrics, 800 held-out "
             "cells.",
    ),
) -> None:
    """Fashion-MNIST, 10 labels per class, EfficientNet-Lite0, strategy auto: the whole job offline (--text: BBC
    News; --audio: spoken digits; --detect: garments on photos, with boxes; --multilabel: the same pictures, labelled
    by the garments they show; --medical: solar-cell EL images)."""
    try:
        if text + audio + detect + multilabel + medical > 1:
            raise TransferkitError("Choose one of --text, --audio, --detect, --multilabel and --medical.")
        from .datasets.demos import DEMOS  # a missing optional package: one line naming the extra to install

        chosen = [name for name, on in (("text", text), ("audio", audio), ("detect", detect),
                                        ("multilabel", multilabel), ("medical", medical)) if on]
        kind = chosen[0] if chosen else "image"
        spec = DEMOS[kind]
        if kind != "image":  # each demo has its own data and run folders unless given
            if data_dir == Path(DEMOS["image"].folder):
                data_dir = Path(spec.folder)
            if out == Path("runs/demo"):
                out = Path(f"runs/demo-{kind}")
        budget = budget or spec.budget
        if spec.task == "detect":  # scored by COCO mAP: say a missing extra before the data are built
            from .evaluation.detection import check_coco

            check_coco()
        data_dir = spec.build(data_dir, per_class, test_size)
    except TransferkitError as err:
        _fail(err)
    # every other option at its own default (typer's placeholders are not values when fit is called directly)
    defaults = {name: getattr(p.default, "default", p.default) for name, p in inspect.signature(fit).parameters.items()}
    fit(**{**defaults, "data": data_dir, "out": out, "budget": budget, "task": spec.task, "modality": spec.modality,
           "strategy": "auto"})


if __name__ == "__main__":
    app()
