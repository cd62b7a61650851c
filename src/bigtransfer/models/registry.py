"""Model registry: every BiT variant with its pretrained configuration."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from ..errors import UnknownNameError
from .resnetv2 import WS_EPS, ResNetV2

BIT_URL = "https://storage.googleapis.com/bit_models/"
MINDCV_URL = "https://download.mindspore.cn/toolkits/mindcv/bit/"
BIT_MEAN = (0.5, 0.5, 0.5)  # official weights take inputs in [-1, 1]
BIT_STD = (0.5, 0.5, 0.5)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ARCHS: dict[str, tuple[tuple[int, ...], float]] = {
    "R50x1": ((3, 4, 6, 3), 1),
    "R50x3": ((3, 4, 6, 3), 3),
    "R101x1": ((3, 4, 23, 3), 1),
    "R101x3": ((3, 4, 23, 3), 3),
    "R152x2": ((3, 8, 36, 3), 2),
    "R152x4": ((3, 8, 36, 3), 4),
    # Small variants of the same design, for CPU demos and tests.
    "R26x0.5": ((2, 2, 2, 2), 0.5),
    "R14x0.5": ((1, 1, 1, 1), 0.5),
}
TIMM_ARCH = {"R50x1": "resnetv2_50x1_bit", "R50x3": "resnetv2_50x3_bit", "R101x1": "resnetv2_101x1_bit",
             "R101x3": "resnetv2_101x3_bit", "R152x2": "resnetv2_152x2_bit", "R152x4": "resnetv2_152x4_bit"}
# timm's pretrained tags in the order its default_cfgs lists them: the first one an architecture has is the
# tag a bare timm name (``resnetv2_50x1_bit``) loads.
TIMM_TAG_ORDER = ("goog_distilled_in1k", "goog_teacher_in21k_ft_in1k", "goog_teacher_in21k_ft_in1k_384",
                  "goog_in21k_ft_in1k", "goog_in21k")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture plus where its pretrained weights come from and how inputs are prepared."""

    name: str
    arch: str
    num_classes: int = 1000
    input_size: int = 224
    mean: tuple[float, float, float] = BIT_MEAN
    std: tuple[float, float, float] = BIT_STD
    url: str | None = None
    sha256: str | None = None  # a full digest or, for mindcv, the published 8-hex prefix
    hf_hub_id: str | None = None  # timm repo on the Hugging Face hub holding model.safetensors
    weights_format: str | None = None  # "npz" | "mindspore" | "timm"
    labels: str | None = None  # "imagenet21k" | "imagenet1k" | "cifar10"
    description: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def block_units(self) -> tuple[int, ...]:
        return ARCHS[self.arch][0]

    @property
    def width_factor(self) -> float:
        return ARCHS[self.arch][1]

    @property
    def has_pretrained(self) -> bool:
        return bool(self.url or self.hf_hub_id)


def _build_registry() -> dict[str, ModelConfig]:
    reg: dict[str, ModelConfig] = {}

    def add(cfg: ModelConfig) -> None:
        reg[cfg.name] = cfg

    for arch, timm_name in TIMM_ARCH.items():
        add(ModelConfig(f"BiT-S-{arch}", arch, 1000, 224, url=f"{BIT_URL}BiT-S-{arch}.npz",
                        weights_format="npz", labels="imagenet1k",
                        description="BiT-S upstream (ILSVRC-2012)"))
        add(ModelConfig(f"BiT-M-{arch}", arch, 21843, 224, url=f"{BIT_URL}BiT-M-{arch}.npz",
                        hf_hub_id=f"timm/{timm_name}.goog_in21k", weights_format="npz",
                        labels="imagenet21k", description="BiT-M upstream (ImageNet-21k)"))
        add(ModelConfig(f"BiT-M-{arch}-ILSVRC2012", arch, 1000, 480 if arch == "R152x4" else 448,
                        url=f"{BIT_URL}BiT-M-{arch}-ILSVRC2012.npz",
                        hf_hub_id=f"timm/{timm_name}.goog_in21k_ft_in1k", weights_format="npz",
                        labels="imagenet1k", description="BiT-M fine-tuned on ILSVRC-2012"))
    add(ModelConfig("BiT-M-R50x1-CIFAR10", "R50x1", 10, 128, url=f"{BIT_URL}BiT-M-R50x1-CIFAR10.npz",
                    weights_format="npz", labels="cifar10", description="BiT-M fine-tuned on CIFAR-10"))
    for res in (224, 160):
        add(ModelConfig(f"BiT-distilled-R50x1-{res}", "R50x1", 1000, res,
                        url=f"{BIT_URL}distill/R50x1_{res}.npz", weights_format="npz", labels="imagenet1k",
                        hf_hub_id="timm/resnetv2_50x1_bit.goog_distilled_in1k" if res == 224 else None,
                        description="R50x1 student distilled from the R152x2 teacher"))
    for res in (224, 384):
        tag = "" if res == 224 else "_384"
        add(ModelConfig(f"BiT-teacher-R152x2-{res}", "R152x2", 1000, res,
                        url=f"{BIT_URL}distill/R152x2_T_{res}.npz", weights_format="npz",
                        hf_hub_id=f"timm/resnetv2_152x2_bit.goog_teacher_in21k_ft_in1k{tag}",
                        labels="imagenet1k", description="R152x2 distillation teacher"))
    for name, arch, file, sha in (("bit_resnet50", "R50x1", "BiT_resnet50-1e4795a4.ckpt", "1e4795a4"),
                                  ("bit_resnet50x3", "R50x3", "BiT_resnet50x3-a960f91f.ckpt", "a960f91f"),
                                  ("bit_resnet101", "R101x1", "BiT_resnet101-2efa9106.ckpt", "2efa9106")):
        add(ModelConfig(name, arch, 1000, 224, IMAGENET_MEAN, IMAGENET_STD, url=MINDCV_URL + file, sha256=sha,
                        weights_format="mindspore", labels="imagenet1k",
                        description="mindcv ImageNet-1k from scratch"))
    add(ModelConfig("BiT-R26x0.5", "R26x0.5", 10, 32, description="small CPU variant (units 2,2,2,2; width 0.5)"))
    add(ModelConfig("BiT-R14x0.5", "R14x0.5", 10, 32, description="tiny CPU variant (units 1,1,1,1; width 0.5)"))
    return reg


_REGISTRY = _build_registry()


def list_models(pretrained: bool | None = None) -> list[str]:
    """Registered model names; ``pretrained=True`` keeps those with downloadable weights."""
    return [n for n, c in _REGISTRY.items() if pretrained is None or c.has_pretrained == pretrained]


def timm_name(cfg: ModelConfig) -> str | None:
    """The timm model name (``resnetv2_50x1_bit.goog_in21k``) whose weights ``cfg`` uses, if any."""
    if cfg.hf_hub_id and cfg.hf_hub_id.startswith("timm/"):
        return cfg.hf_hub_id[len("timm/"):]
    return None


def timm_aliases() -> dict[str, str]:
    """timm model names mapped to ours: every ``arch.tag`` of a registered model, and each bare ``arch``.

    A bare name means timm's default tag for it: the first of ``TIMM_TAG_ORDER`` that the architecture has.
    """
    tagged: dict[str, str] = {}
    for cfg in _REGISTRY.values():
        alias = timm_name(cfg)
        if alias:
            tagged.setdefault(alias, cfg.name)

    def rank(alias: str) -> int:
        tag = alias.partition(".")[2]
        return TIMM_TAG_ORDER.index(tag) if tag in TIMM_TAG_ORDER else len(TIMM_TAG_ORDER)

    bare: dict[str, str] = {}
    for alias in sorted(tagged, key=rank):
        bare.setdefault(alias.partition(".")[0], tagged[alias])
    return {**tagged, **bare}


def get_config(name: str) -> ModelConfig:
    """The configuration of a registered model; names match case-insensitively.

    timm names are aliases: ``resnetv2_50x1_bit.goog_in21k`` is ``BiT-M-R50x1``, and a bare
    ``resnetv2_50x1_bit`` is timm's default tag for it (the first of ``TIMM_TAG_ORDER`` it has).
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    for key, cfg in _REGISTRY.items():
        if key.lower() == name.lower():
            return cfg
    aliases = timm_aliases()
    for alias, target in aliases.items():
        if alias.lower() == name.lower():
            return _REGISTRY[target]
    if name.lower().startswith("resnetv2"):
        raise UnknownNameError("model", name, aliases, hint="run 'bit models --timm' to list them")
    raise UnknownNameError("model", name, _REGISTRY)


def register_model(cfg: ModelConfig) -> None:
    """Add (or replace) a model configuration."""
    if cfg.arch not in ARCHS:
        raise UnknownNameError("architecture", cfg.arch, ARCHS)
    _REGISTRY[cfg.name] = cfg


def build_model(name: str, num_classes: int | None = None, *, ws_eps: float = WS_EPS,
                device: torch.device | str | None = None) -> ResNetV2:
    """A registered model's network with fresh weights and its ``pretrained_cfg``; ``num_classes`` sets the head."""
    cfg = get_config(name)
    head = num_classes if num_classes is not None else cfg.num_classes
    model = ResNetV2(cfg.block_units, cfg.width_factor, num_classes=head, ws_eps=ws_eps)
    model.pretrained_cfg = _cfg_dict(replace(cfg, num_classes=head))
    return model if device is None else model.to(device)


def arch_name(block_units, width_factor: float) -> str | None:
    """The registered architecture name (``R50x1`` ...) with these units and width, if any."""
    for name, (units, wf) in ARCHS.items():
        if tuple(units) == tuple(block_units) and float(wf) == float(width_factor):
            return name
    return None


def build_network(block_units, width_factor: float, num_classes: int) -> ResNetV2:
    """A network of any units and width, registered or not; its ``pretrained_cfg`` names the architecture only."""
    wf = int(width_factor) if float(width_factor).is_integer() else width_factor
    model = ResNetV2(block_units, wf, num_classes=num_classes)
    model.pretrained_cfg = {"name": "", "arch": arch_name(block_units, width_factor) or "",
                            "num_classes": model.num_classes}
    return model


def _cfg_dict(cfg: ModelConfig) -> dict:
    return {k: getattr(cfg, k) for k in ("name", "arch", "num_classes", "input_size", "mean", "std", "url",
                                         "sha256", "hf_hub_id", "weights_format", "labels")}
