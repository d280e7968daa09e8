"""Explainers, one per kind of input: they turn a run's encoded examples into model inputs, attribute a target class
to the input's units with `captum <https://captum.ai>`_, remove units for the deletion check, and build what is drawn.
The task chooses one for its data (:meth:`transferkit.tasks.base.Task.explainer`); :mod:`.explain` does the rest.

- :class:`PixelExplainer` (images, medical images): HiResCAM on the backbone's last feature map
  (:func:`transferkit.backbones.maps.feature_map_layer`): gradient x activation summed over channels
  (captum's ``LayerGradientXActivation``), positive part, upsampled to the image. For a CNN whose features are the
  global average of that map it equals Grad-CAM and CAM (the gradient is the same at every position); unlike
  Grad-CAM it stays exact for a vision transformer's patch tokens and for maps that pass through further layers
  (Draelos & Carin, 2020). Units: the map's cells; removed ones are set to the mean colour.
- :class:`SpectrogramExplainer` (audio on a spectrogram CNN): the same map over the log-mel window the CNN saw, for
  the recording's window that most supports the class. Units: cells; removed ones are set to the mean level.
- :class:`TokenExplainer` (texts): integrated gradients on the word embeddings (captum's ``LayerIntegratedGradients``,
  from an input whose words are all padding), summed per word. Units: tokens; removed ones are masked out.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..backbones.maps import feature_map_layer
from ..heads.linear import class_probabilities
from .explain import BORDER, Explanation

# integrated-gradient steps per text. Measured on BBC News (all-MiniLM-L6-v2, 256-token articles, 16 right answers):
# deletion score 0.30 with 8 steps, 0.33 with 16 at twice the time, 0.18 with 4; gradient x input alone scored -0.06
IG_STEPS = 8


class frozen:
    """Within ``with frozen(net):`` no parameter of ``net`` records gradients, so an attribution's backward pass
    stops at the layer it asks about instead of building a graph through the whole network (measured: a map costs
    about a forward pass then); the previous flags come back afterwards."""

    def __init__(self, net: nn.Module):
        self.params = [p for p in net.parameters() if p.requires_grad]

    def __enter__(self) -> None:
        for p in self.params:
            p.requires_grad_(False)

    def __exit__(self, *exc: object) -> None:
        for p in self.params:
            p.requires_grad_(True)


def grid_maps(net: nn.Module, forward: Any, layer: Any, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """HiResCAM maps ``(B, h, w)``, positive part, of ``forward``'s ``targets`` logits on ``layer``'s output
    (:class:`~transferkit.backbones.maps.FeatureMapLayer`); ``net``: the network ``forward`` runs."""
    from captum.attr import LayerGradientXActivation

    with torch.enable_grad(), frozen(net):
        attribution = LayerGradientXActivation(forward, layer.module).attribute(
            x, target=targets, attribute_to_layer_input=layer.use_input)
    return layer.to_grid(attribution.detach().float()).sum(1).clamp(min=0)


def empty_note(cells: torch.Tensor) -> str:
    """What a drawing says of a map with no positive attribution anywhere (nothing in the input raises the class's
    score: its evidence is an absence, or a bias)."""
    return "" if bool((cells > 0).any()) else "map empty: no region raises this score"


def scale_to_one(maps: torch.Tensor) -> torch.Tensor:
    """Each map divided by its largest value (all-zero maps stay zero)."""
    top = maps.reshape(len(maps), -1).amax(1).clamp(min=1e-12)
    return maps / top.view(-1, *([1] * (maps.dim() - 1)))


class GridExplainer:
    """What the pixel and spectrogram explainers share: maps on a feature-map grid, removal by grid cell."""

    method = "HiResCAM (gradient x activation on the last feature map)"
    kind = "image"
    report_examples = (2, 1)  # per class in the report: right answers, most confidently wrong
    deletion_examples = 16

    def __init__(self, classifier: nn.Module, multi_label: bool, classes: list[str]):
        self.net = classifier.eval()
        self.multi_label = multi_label
        self.classes = list(classes)

    @property
    def grid(self) -> tuple[int, int]:
        """The feature map's (h, w): the units the deletion check removes."""
        return self.layer.grid

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return class_probabilities(self.logits(x), self.multi_label)

    def maps(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return grid_maps(self.net, self.logits, self.layer, x, targets)

    def units(self, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.maps(x, targets).reshape(len(x), -1)
        return scores, torch.ones_like(scores, dtype=torch.bool)

    def remove(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """``x`` with the grid cells where ``keep`` (B, h*w) is False set to 0 (the mean after standardisation)."""
        h, w = self.grid
        mask = keep.view(len(x), 1, h, w).float()
        out = x * nn.functional.interpolate(mask, size=x.shape[-2:], mode="nearest")
        return out.contiguous(memory_format=torch.channels_last)  # as every forward pass of a run

    def upsampled(self, x: torch.Tensor, targets: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        """Maps at the input's size, each scaled to [0, 1], and the grid cells' scores (B, h*w)."""
        maps = self.maps(x, targets)
        up = nn.functional.interpolate(maps[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return scale_to_one(up.clamp(min=0)).numpy(), maps.reshape(len(maps), -1)


class PixelExplainer(GridExplainer):
    """Images: the map over the decoded image the model saw (for medical images, after windowing)."""

    def __init__(self, classifier: nn.Module, preprocess: Any, multi_label: bool, classes: list[str]):
        super().__init__(classifier, multi_label, classes)
        self.pre = preprocess
        self.layer = feature_map_layer(classifier.backbone.body, tuple(preprocess.input_size))

    def inputs(self, data: Any, idx: list[int], targets: list[int] | None = None) -> torch.Tensor:
        from ..data.images import image_prepare

        return image_prepare(self.pre)(data.pixels[torch.as_tensor(idx)])

    def explain(self, data: Any, idx: list[int], targets: list[int],
                probabilities: list[float]) -> list[Explanation]:
        x = self.inputs(data, idx)
        maps, cells = self.upsampled(x, torch.as_tensor(targets))
        shown = data.pixels[torch.as_tensor(idx)]
        if getattr(self.pre, "slices", "2d") == "2.5d":  # three neighbouring slices: show the middle one, in grey
            shown = shown[:, 1:2].expand(-1, 3, -1, -1)
        shown = shown.permute(0, 2, 3, 1).numpy()
        band = max(BORDER, 1 / min(self.grid))  # a band no thinner than one cell of the map
        return [Explanation("image", shown[i], maps[i], self.classes[targets[i]], float(probabilities[i]),
                            empty_note(cells[i]), units=cells[i],
                            valid=torch.ones(len(cells[i]), dtype=torch.bool), band=band) for i in range(len(idx))]


class SpectrogramExplainer(GridExplainer):
    """Audio on a spectrogram CNN: the map over the standardised log-mel window the CNN saw."""

    kind = "spectrogram"

    def __init__(self, classifier: nn.Module, multi_label: bool, classes: list[str]):
        super().__init__(classifier, multi_label, classes)
        bb = classifier.backbone
        pre = bb.preprocess
        frames = 1 + pre.clip_samples // pre.hop_length
        height = pre.image_height or pre.n_mels
        width = pre.image_width or max(8, round(frames * height / pre.n_mels))
        self.layer = feature_map_layer(bb.body, (height, width))
        self.seen: dict[tuple[int, int, int], tuple[int, str]] = {}  # (data, recording, class) -> (window, note)

    def logits(self, spec: torch.Tensor) -> torch.Tensor:
        return self.net.head(self.net.backbone.from_spectrogram(spec))

    def windows(self, data: Any, idx: list[int], targets: list[int]) -> tuple[list[int], list[str]]:
        """For each recording, its window whose logits most favour the target (where the class is heard), and a
        note saying which window it is; windows scored 32 at a time (a long recording has thousands)."""
        chosen, notes = [], []
        for i, t in zip(idx, targets, strict=True):
            key = (id(data), int(i), int(t))
            if key not in self.seen:
                rows = (data.owner == i).nonzero().flatten()
                with torch.no_grad():
                    z = torch.cat([self.net(data.waves[rows[s:s + 32]].float())[:, t] for s in range(0, len(rows), 32)])
                best = int(torch.argmax(z))
                self.seen[key] = (int(rows[best]), f"window {best + 1} of {len(rows)}" if len(rows) > 1 else "")
            chosen.append(self.seen[key][0])
            notes.append(self.seen[key][1])
        return chosen, notes

    def inputs(self, data: Any, idx: list[int], targets: list[int] | None = None) -> torch.Tensor:
        rows = self.windows(data, idx, targets)[0] if targets is not None else \
            [int((data.owner == i).nonzero()[0]) for i in idx]
        with torch.no_grad():
            return self.net.backbone.spectrogram(data.waves[torch.as_tensor(rows)].float())

    def explain(self, data: Any, idx: list[int], targets: list[int],
                probabilities: list[float]) -> list[Explanation]:
        rows, notes = self.windows(data, idx, targets)
        with torch.no_grad():
            spec = self.net.backbone.spectrogram(data.waves[torch.as_tensor(rows)].float())
        maps, cells = self.upsampled(spec, torch.as_tensor(targets))
        return [Explanation("spectrogram", spec[i, 0].numpy(), maps[i], self.classes[targets[i]],
                            float(probabilities[i]), "; ".join(n for n in (notes[i], empty_note(cells[i])) if n),
                            units=cells[i],
                            valid=torch.ones(len(cells[i]), dtype=torch.bool)) for i in range(len(idx))]


class TokenExplainer:
    """Texts: integrated gradients on the word embeddings, per token and per word."""

    method = f"integrated gradients on the word embeddings ({IG_STEPS} steps, padding as the baseline)"
    kind = "tokens"
    # a text costs IG_STEPS forward and backward passes (a 256-token article about a second on 2 CPU cores)
    report_examples = (1, 1)
    deletion_examples = 8

    def __init__(self, classifier: nn.Module, multi_label: bool, classes: list[str]):
        self.net = classifier.eval()
        self.multi_label = multi_label
        self.classes = list(classes)
        bb = classifier.backbone
        self.tokenizer = bb.tokenizer
        self.embeddings = bb.body.get_input_embeddings()
        self.special = torch.tensor(sorted(set(self.tokenizer.all_special_ids)), dtype=torch.long)
        self.pad = int(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0)

    def logits(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.net({"input_ids": ids, "attention_mask": mask})

    def probabilities(self, x: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return class_probabilities(self.logits(*x), self.multi_label)

    def inputs(self, data: Any, idx: list[int], targets: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = data.input_ids[idx].long(), data.attention_mask[idx].long()
        length = max(1, int(mask.sum(1).max()))
        return ids[:, :length], mask[:, :length]

    def attributions(self, x: tuple[torch.Tensor, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        """(B, L) integrated gradients per token (summed over the embedding), 0 on padding."""
        from captum.attr import LayerIntegratedGradients

        ids, mask = x
        baseline = torch.where(self.removable(ids, mask), torch.tensor(self.pad), ids)
        ig = LayerIntegratedGradients(self.logits, self.embeddings)
        with torch.enable_grad(), frozen(self.net):
            a = ig.attribute(ids, baselines=baseline, target=targets, additional_forward_args=(mask,),
                             n_steps=IG_STEPS, internal_batch_size=32)
        return a.detach().float().sum(-1) * mask

    def removable(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return mask.bool() & ~torch.isin(ids, self.special)

    def units(self, x: tuple[torch.Tensor, torch.Tensor], targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.attributions(x, targets), self.removable(*x)

    def remove(self, x: tuple[torch.Tensor, torch.Tensor], keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = x
        return ids, mask * keep.long()

    def explain(self, data: Any, idx: list[int], targets: list[int],
                probabilities: list[float]) -> list[Explanation]:
        x = self.inputs(data, idx)
        scores = self.attributions(x, torch.as_tensor(targets))
        out = []
        for i, row in enumerate(idx):
            n = int(x[1][i].sum())
            text = data.texts[row] if getattr(data, "texts", None) else None
            words, per_word = self.words(text, x[0][i, :n].tolist(), scores[i, :n])
            top = float(np.abs(per_word).max()) if len(per_word) else 0.0
            out.append(Explanation("tokens", text, per_word / top if top > 0 else per_word,
                                   self.classes[targets[i]], float(probabilities[i]), words=words, units=scores[i, :n],
                                   valid=self.removable(x[0][i:i + 1, :n], x[1][i:i + 1, :n])[0]))
        return out

    def words(self, text: str | None, ids: list[int], scores: torch.Tensor) -> tuple[list[tuple[str, int | None]],
                                                                                   np.ndarray]:
        """The text cut into pieces, each word with its index (the text between words with None), and each word's
        summed token attribution. Words come from the fast tokenizer's offsets on the original text; without them
        (or if the text no longer tokenizes to ``ids``) the tokens themselves are the words."""
        scores = scores.numpy()
        if text is not None and getattr(self.tokenizer, "is_fast", False):
            enc = self.tokenizer(text, truncation=True, max_length=len(ids), return_offsets_mapping=True)
            if enc["input_ids"] == ids:
                spans: list[list[Any]] = []  # [word id, start, end, summed score], in text order
                for t, (word, (a, b)) in enumerate(zip(enc.word_ids(), enc["offset_mapping"], strict=True)):
                    if word is None or b <= a:
                        continue
                    if spans and spans[-1][0] == word:  # another piece of the same word
                        spans[-1][2], spans[-1][3] = max(spans[-1][2], b), spans[-1][3] + float(scores[t])
                    else:
                        spans.append([word, a, b, float(scores[t])])
                pieces: list[tuple[str, int | None]] = []
                end = 0
                for k, (_, a, b, _) in enumerate(spans):
                    if a > end:
                        pieces.append((text[end:a], None))
                    pieces.append((text[a:b], k))
                    end = b
                if text[end:].strip():  # the part the model never read (truncated)
                    pieces.append((" [...]", None))
                return pieces, np.asarray([s[3] for s in spans], dtype=np.float64)
        tokens = self.tokenizer.convert_ids_to_tokens(ids)
        special = set(self.special.tolist())
        keep = [t for t, i in enumerate(ids) if i not in special]
        pieces = []
        for n, t in enumerate(keep):
            pieces += [(" ", None)] if n else []
            pieces.append((tokens[t], n))
        return pieces, np.asarray([float(scores[t]) for t in keep], dtype=np.float64)

