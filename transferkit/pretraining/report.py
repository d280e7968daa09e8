"""What a pre-training run leaves beside its backbone: the curve of loss and metric per step, and a short report."""

from __future__ import annotations

from pathlib import Path


def curve_png(metrics: dict, path: Path) -> None:
    from ..evaluation.plots import pyplot, save_figure

    plt = pyplot()
    log = metrics["record"]["log"]
    evals = metrics["record"]["evaluations"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    steps = [e["step"] for e in log]
    ax1.plot(steps, [e["loss"] for e in log], marker="o", ms=2, label="training")
    if evals:
        ax1.plot([e["step"] for e in evals], [e["val_loss"] for e in evals], marker="s", ms=4, label="validation")
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax2.plot(steps, [e["metric"] for e in log], marker="o", ms=2, label=f"training ({metrics['metric']})")
    if evals:
        ax2.plot([e["step"] for e in evals], [e["val_accuracy"] for e in evals], marker="s", ms=4,
                 label="validation accuracy")
    ax2.set_xlabel("step")
    ax2.set_ylim(0, 1)
    ax2.legend()
    fig.suptitle(f"Pre-training ({metrics['method']}) on {Path(metrics['data']['path']).name}")
    save_figure(fig, path)


def report_md(metrics: dict, out: Path) -> str:
    rec = metrics["record"]
    data = metrics["data"]
    last = rec["log"][-1] if rec["log"] else {}
    start = metrics["start"]
    start_text = f"{start['name']} ({start['weights']})" if "name" in start else f"{start['arch']} from random weights"
    what = "images" if metrics["modality"] == "image" else "documents"
    lines = [
        f"# Pre-training: {metrics['method']}",
        "",
        f"- Data: `{data['path']}`, {data['examples']:,} {what}"
        + (f" in {len(data['classes'])} classes" if data.get("classes") else " (unlabelled)")
        + f" (listing sha256 {data['listing_sha256'][:12]})",
        f"- Start: {start_text}",
        f"- Training: {metrics['total_steps']:,} steps ({metrics['epochs']:g} epochs) of {metrics['global_batch']} "
        f"examples, AdamW lr {metrics['lr']:g}, weight decay {metrics['weight_decay']:g}, warm-up then cosine decay",
        (f"- Input: {metrics['input'][0]}x{metrics['input'][1]} px" if metrics["modality"] == "image"
         else f"- Input: windows of {metrics['input']} tokens from each document"),
        f"- Ran on {metrics['processes']} process(es), {metrics['device']}, precision {metrics['precision']}: "
        f"{metrics['samples_per_s']:.1f} samples/s, {metrics['seconds']:.0f} s in all",
    ]
    if len(rec["sessions"]) > 1:
        lines.append(f"- Resumed {len(rec['sessions']) - 1} time(s), at step(s) "
                     + ", ".join(str(s["start_step"]) for s in rec["sessions"][1:]))
    if last:
        lines.append(f"- Last log point: loss {last['loss']:.4f}, {metrics['metric']} {last['metric']:.3f}")
    if rec["evaluations"]:
        e = rec["evaluations"][-1]
        lines.append(f"- Validation ({e['val_n']} held-out images): accuracy {e['val_accuracy']:.4f}, loss "
                     f"{e['val_loss']:.4f}")
    lines += ["", "Use it:", "", "```", f"transferkit fit YOUR-DATA --backbone {out}", "```", "",
              "![curve](pretrain_curve.png)", ""]
    return "\n".join(lines)
