"""Pre-training objectives. Each wraps what trains (an ``nn.Module``), how one batch becomes a loss, and how the
trained backbone is written so that ``--backbone PATH`` loads it.

- ``supervised`` (images): backbone + linear classifier on the source labels, plain cross-entropy. The classic
  source task: the classifier is dropped, the features are kept. No label smoothing by default: it raises source
  accuracy but makes penultimate features transfer worse (Kornblith et al., 2021, "Why Do Better Loss Functions
  Lead to Less Transferable Features?"), which our own measurement repeated (docs/benchmarks.md).
- ``simclr`` (images): two augmented views of each image, backbone + 2-layer projection MLP, NT-Xent loss
  (temperature 0.2): each view must find its partner among all other views of the global batch (gathered across
  processes, with gradients).
  Chosen over masked-image modelling because the backbones that work offline here are CNNs (EfficientNet-Lite):
  masked-image methods (MAE, SimMIM) rely on a ViT's patch tokens, while a contrastive objective works for any
  backbone that gives a pooled vector.
- ``mlm`` (texts): BERT's masked-language-model objective on the in-domain texts, the recipe of domain-adaptive
  pre-training (Gururangan et al., 2020, "Don't Stop Pretraining"). The prediction head is the model's own where
  its files have one, else new (tied to the input embeddings); only the encoder is kept.
- ``simcse`` (texts): unsupervised SimCSE (Gao et al., 2021): each text is encoded twice with different dropout
  masks, and the two embeddings must find each other among the batch's other embeddings (NT-Xent, temperature
  0.05). It trains the pooled
  sentence embedding itself, so it suits sentence-embedding encoders (all-MiniLM-L6-v2), whose pooled vectors
  MLM does not train.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

METHODS = {
    "supervised": "image",
    "simclr": "image",
    "mlm": "text",
    "simcse": "text",
}


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float, accelerator) -> tuple[torch.Tensor, torch.Tensor]:
    """SimCLR's NT-Xent: ``a[i]`` and ``b[i]`` are two views of one example; each of the ``2n`` views must pick its
    partner among the other ``2N - 1`` views of the global batch (under several processes the other processes'
    views are gathered, with gradients). Returns (mean loss over this process's views, how many picked right)."""
    z = nn.functional.normalize(torch.cat([a, b]).float(), dim=-1)
    n, offset, everything = len(a), 0, z
    if accelerator.num_processes > 1:
        import torch.distributed.nn.functional as dist_fn

        everything = torch.cat(dist_fn.all_gather(z))
        offset = accelerator.process_index * len(z)
    logits = z @ everything.T / temperature
    rows = torch.arange(2 * n, device=z.device)
    logits[rows, rows + offset] = float("-inf")  # a view is not its own partner
    target = (rows + n) % (2 * n) + offset
    loss = nn.functional.cross_entropy(logits, target)
    return loss, (logits.argmax(1) == target).sum()


class SupervisedModel(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class SimCLRModel(nn.Module):
    def __init__(self, backbone: nn.Module, hidden: int = 512, dim: int = 128):
        super().__init__()
        self.backbone = backbone
        self.projector = nn.Sequential(nn.Linear(backbone.num_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                       nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))


class Method:
    """One objective: ``model`` trains; ``loss(model, batch)`` gives (loss, correct, counted) for a batch already on the
    device; ``metric`` names what ``correct / counted`` measures."""

    name = ""
    metric = "accuracy"

    def __init__(self, backbone: Any, accelerator, **options: Any):
        self.backbone = backbone
        self.accelerator = accelerator
        self.model = self.build(**options)
        if getattr(backbone, "modality", "image") == "image":
            from ..data.images import image_prepare

            self.prepare = image_prepare(backbone.preprocess)  # normalised, channels_last, as in fit

    def build(self, **options: Any) -> nn.Module:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor, int]:
        raise NotImplementedError


class Supervised(Method):
    name, metric = "supervised", "train accuracy"

    def build(self, num_classes: int, label_smoothing: float = 0.0) -> nn.Module:
        self.label_smoothing = label_smoothing
        return SupervisedModel(self.backbone, num_classes)

    def loss(self, model, batch):
        x, y = batch
        logits = model(self.prepare(x)).float()
        loss = nn.functional.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        return loss, (logits.argmax(1) == y).sum(), len(y)


class SimCLR(Method):
    name, metric = "simclr", "contrastive top-1"

    def build(self, temperature: float = 0.2) -> nn.Module:
        self.temperature = temperature
        return SimCLRModel(self.backbone)

    def loss(self, model, batch):
        x, _ = batch  # (B, 2, 3, H, W): two views of each image
        n = len(x)
        z = model(self.prepare(x.transpose(0, 1).reshape(2 * n, *x.shape[2:])))
        loss, correct = nt_xent(z[:n], z[n:], self.temperature, self.accelerator)
        return loss, correct, 2 * n


class MLM(Method):
    name, metric = "mlm", "masked-token accuracy"

    def build(self) -> nn.Module:
        from transformers import AutoModelForMaskedLM

        from ..backbones.text import model_dir, transformer_dir

        from ..errors import BackboneError

        try:
            if self.backbone.spec.weights == "random":
                model = AutoModelForMaskedLM.from_config(self.backbone.body.config)
            else:  # the model's own prediction head where its files have one; float32 whatever the files hold
                model, loading = AutoModelForMaskedLM.from_pretrained(
                    str(transformer_dir(model_dir(self.backbone.spec))), dtype=torch.float32, output_loading_info=True,
                    trust_remote_code=False)
                if loading["missing_keys"]:
                    from ..console import warn

                    warn(f"{self.backbone.spec.name} ships no masked-LM head: a new one starts from random weights, "
                         "and its early gradients disturb the encoder (with all-MiniLM-L6-v2 on BBC News this lowered "
                         "few-shot accuracy); prefer an encoder that ships its head (BERT, RoBERTa), or more epochs")
        except ValueError as err:
            raise BackboneError(f"{self.backbone.spec.name!r} has no masked-language-model form "
                                f"({str(err).splitlines()[0][:120]}): use --method simcse.") from None
        # the encoder is the backbone's: same tensors, so what MLM trains is what gets saved
        missing = model.base_model.load_state_dict(self.backbone.body.state_dict(), strict=False)
        if missing.missing_keys:
            raise BackboneError(f"Text backbone {self.backbone.spec.name!r} does not fit its masked-LM model "
                                f"({missing.missing_keys[0]} missing): use --method simcse for this encoder.")
        self.backbone.body = model.base_model
        return model

    def loss(self, model, batch):
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        target = batch["labels"] != -100
        correct = (out.logits.argmax(-1)[target] == batch["labels"][target]).sum()
        return out.loss, correct, int(target.sum())


class SimCSE(Method):
    name, metric = "simcse", "in-batch top-1"

    def build(self, temperature: float = 0.05) -> nn.Module:
        self.temperature = temperature
        return self.backbone

    def loss(self, model, batch):
        n = len(batch["input_ids"])
        # each text twice in one forward pass (as SimCSE does): the two copies get different dropout masks
        z = model({k: batch[k].repeat(2, 1) for k in ("input_ids", "attention_mask")})
        loss, correct = nt_xent(z[:n], z[n:], self.temperature, self.accelerator)
        return loss, correct, 2 * n


def make_method(name: str, backbone: Any, accelerator, **options: Any) -> Method:
    cls = {"supervised": Supervised, "simclr": SimCLR, "mlm": MLM, "simcse": SimCSE}[name]
    return cls(backbone, accelerator, **options)
