"""Training recipes: the paper-scale presets, the demo's CPU-sized ones, and training on a world.

Presets (``diffeel train --recipe NAME --show-config`` prints one with where each value comes from):

- ``rpl``: RPL's published recipe (Liu et al., ICCV 2023, and its code): the residual module on
  RPL's mixed data with RPL's loss.
- ``rpl+eel``: the paper's RPL + DiffEEL (section V-A: lr 5e-5, poly, 30 epochs, λ = 0.05), the
  rest inherited from RPL's recipe, Eq. 8 on diffeel's synthesized data.
- ``m2a`` / ``m2a+eel``: Mask2Anomaly's fine-tuning recipe and the paper's M2A + DiffEEL (Eq. 10).
  They train ``mask2anomaly_r50`` on Cityscapes (``diffeel train --cityscapes --host mask2anomaly_r50``).
- ``demo-closed``, ``demo-rpl``, ``demo-rpl+eel``: the demo's CPU-sized settings (a small DeepLab
  on 256×128 world frames for minutes, not a WiderResNet38 on 700×700 crops for days).

Every option reaches the code that uses it: the loss weights go into the loss, the optimizer,
schedule and clipping into the loop, the synthesizer, pool, crop and paste probability into the
data; the checkpoint stores the config that ran.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import losses
from ..data.camvid import CAMVID_CAMERA
from ..data.images import read_image, read_label
from ..errors import DiffeelError
from ..labels import NUM_CLASSES, VOID
from ..models import RPLModel, SmallDeepLab, is_mask_model, load_state
from ..models.adapter import ResidualAdapter
from ..distributed import Distributed
from .data import INLIER_DATASETS, EpochBatches, PseudoLabelledFolder, augment_frame
from .loop import TrainConfig, step_generator, train

RPL_ITERATIONS_PER_EPOCH = 371  # RPL's code: 2975 Cityscapes frames / batch 8
MASK_LOSSES = ("m2a-inlier", "m2a", "m2a+eel")
_BLENDER_SOURCES = {
    "placement": "paper IV-A: the blender searches the image for an optimal placement (candidates scored by road support "
                 "and appearance distance; heights follow the perspective)",
    "harmonizer": "paper IV-A: size and illumination adjusted, then DoveNet [55] (needs --harmonizer WEIGHTS)",
}
_ADAPTER_SOURCE = {
    "adapter_point": "diffeel: a host without RPL's module (e.g. espnetv2_cityscapes) trains a residual adapter at this "
                     "module; null = the host's own adapter_point",
}
# Mask2Former's Cityscapes base config (Base-Cityscapes-SemanticSegmentation.yaml), which Mask2Anomaly's configs extend
MASK2FORMER_SHORT_SIDES = [int(x * 0.1 * 1024) for x in range(5, 21)]  # INPUT.MIN_SIZE_TRAIN, "choice" sampling
MASK2FORMER_MAX_SIZE = 4096  # INPUT.MAX_SIZE_TRAIN
_MASK2FORMER_DATA = {"resize_short_side": MASK2FORMER_SHORT_SIDES, "resize_max_size": MASK2FORMER_MAX_SIZE, "photometric": "ssd",
                     "decay_norm_and_embedding": False}
_MASK2FORMER_SOURCES = {
    "resize_short_side": "Mask2Former's Cityscapes base config: ResizeShortestEdge before the crop, short side one of 512..2048",
    "resize_max_size": "Mask2Former's Cityscapes base config: MAX_SIZE_TRAIN",
    "photometric": "Mask2Former's Cityscapes base config: COLOR_AUG_SSD (detectron2's SSD colour augmentation)",
    "decay_norm_and_embedding": "Mask2Former's optimizer: WEIGHT_DECAY_NORM = WEIGHT_DECAY_EMBED = 0",
}
_MASK2ANOMALY_LOSS = {"class_weight": 2.0, "mask_weight": 5.0, "dice_weight": 5.0, "no_object_weight": 0.1,
                      "train_points": 12544, "deep_supervision": True, "ce_weight": 1.0}

# name → (config, {setting: where its value comes from})
PRESETS: dict[str, tuple[TrainConfig, dict[str, str]]] = {
    "rpl": (
        TrainConfig("rpl", steps=40 * RPL_ITERATIONS_PER_EPOCH, loss="rpl", batch_size=8, optimizer="adam", lr=7.5e-5,
                    head_lr_multiplier=10.0, weight_decay=0.0, poly_power=0.9, clip=None, crop=[700, 700], synthesizer="rpl-mix",
                    anomaly_weight=0.05, photometric="none", save_every=RPL_ITERATIONS_PER_EPOCH),
        {"steps": "RPL code: 40 epochs × 371 iterations", "lr": "RPL code (its README says 7.5e-6)",
         "head_lr_multiplier": "RPL code: atten_aspp_final at 10× lr", "optimizer": "RPL code: Adam, no weight decay",
         "clip": "RPL code: no clipping", "crop": "RPL code: 700×700 crops", "synthesizer": "RPL code: COCO outliers (a new proxy set of 2,975 filtered images every epoch), random scale and position",
         "photometric": "RPL code: flip and crop only",
         "anomaly_weight": "RPL code: 0.05 · energy hinge", **_ADAPTER_SOURCE},
    ),
    "rpl+eel": (
        TrainConfig("rpl+eel", steps=30 * RPL_ITERATIONS_PER_EPOCH, loss="rpl+eel", batch_size=8, optimizer="adam", lr=5e-5,
                    head_lr_multiplier=10.0, weight_decay=0.0, poly_power=0.9, clip=None, crop=[700, 700], crop_around_anomaly=True,
                    synthesizer="placement", placement="best", harmonizer="illumination+dovenet", anomaly_weight=0.05, alpha=1.0,
                    photometric="none", save_every=RPL_ITERATIONS_PER_EPOCH),
        {"steps": "paper V-A: 30 epochs (371 iterations each, as RPL)", "lr": "paper V-A", "poly_power": "paper V-A: poly decay (power as RPL)",
         "anomaly_weight": "paper: λ = 0.05 (Eq. 8)", "alpha": "paper: α = 1", "synthesizer": "paper IV-A: the harmonization blender pastes objects on the road",
         **_BLENDER_SOURCES,
         "inlier_entropy": "inlier entropy pushed down, as the paper's text intends ('paper': Eq. 7's printed sign)",
         "optimizer": "inherited from RPL", "head_lr_multiplier": "inherited from RPL", "batch_size": "inherited from RPL",
         "crop": "inherited from RPL", "clip": "inherited from RPL", "photometric": "inherited from RPL",
         "crop_around_anomaly": "RPL's crops always hold the pasted object (it pastes into the crop); placement needs the "
                                "whole view, so the crop is chosen around a placed object", **_ADAPTER_SOURCE},
    ),
    "m2a-inlier": (
        TrainConfig("m2a-inlier", steps=90000, loss="m2a-inlier", batch_size=16, optimizer="adamw", lr=1e-4, weight_decay=0.05,
                    poly_power=0.9, clip=0.01, crop=[380, 760], synthesizer="none", **_MASK2FORMER_DATA,
                    mask_loss=dict(_MASK2ANOMALY_LOSS), save_every=1000),
        {"*": "Mask2Anomaly's stage 1 (anomaly_train.yaml on Mask2Former's Cityscapes base config): the GMA Mask2Former "
              "on Cityscapes inliers, the start of m2a and m2a+eel",
         "steps": "anomaly_train.yaml: 90,000 iterations (Mask2Former's Cityscapes schedule)",
         "batch_size": "Mask2Former's Cityscapes base config: IMS_PER_BATCH 16", "lr": "base config: 1e-4, poly 0.9, no warm-up",
         "weight_decay": "base config", "clip": "base config: full-model gradient-norm clip 0.01",
         "crop": "anomaly_train.yaml: 380×760", "synthesizer": "stage 1 sees inliers only",
         "amp": "Mask2Former trains with AMP: --set amp=true on CUDA",
         "save_every": "diffeel: a checkpoint to resume from every 1,000 steps (anomaly_train.yaml keeps one per 45,000)",
         "mask_loss": "Mask2Former's matcher/loss weights, no anomaly term", **_MASK2FORMER_SOURCES},
    ),
    "m2a": (
        TrainConfig("m2a", steps=5000, loss="m2a", batch_size=8, optimizer="adamw", lr=1e-5, weight_decay=0.05, poly_power=0.9,
                    clip=0.01, crop=[380, 760], synthesizer="rpl-mix", paste_probability=0.2, anomaly_weight=1.0, **_MASK2FORMER_DATA,
                    mask_loss={**_MASK2ANOMALY_LOSS, "contrastive_margin": 1.0, "contrastive_void_as_inlier": True,
                               "contrastive_resize": "official"}, save_every=500),
        {"steps": "Mask2Anomaly code (its paper: 4,000)", "clip": "Mask2Anomaly code: full-model gradient-norm clip 0.01",
         "paste_probability": "Mask2Anomaly code: COCO outlier at native size with p = 0.2",
         "mask_loss": "Mask2Former matcher/loss weights; contrastive margin 1.0 in code (0.75 in its paper); Mask2Anomaly "
                      "code: void pixels in the contrastive inlier term (its id mask is ood_mask == 0), the score stretched "
                      "onto the labels with align_corners=True", **_MASK2FORMER_SOURCES},
    ),
    "m2a+eel": (
        TrainConfig("m2a+eel", steps=4000, loss="m2a+eel", batch_size=8, optimizer="adamw", lr=1e-5, weight_decay=0.05, poly_power=0.9,
                    clip=0.01, crop=[380, 760], crop_around_anomaly=True, synthesizer="placement", placement="best",
                    harmonizer="illumination+dovenet", paste_probability=0.2,
                    anomaly_weight=0.05, alpha=1.0, **_MASK2FORMER_DATA,
                    mask_loss={**_MASK2ANOMALY_LOSS, "eel_logits": "raw"}, save_every=500),
        {"steps": "paper V-A: 4,000 iterations", "lr": "paper V-A", "weight_decay": "paper V-A", "batch_size": "paper V-A",
         "anomaly_weight": "paper: λ = 0.05 (Eq. 10)",
         "mask_loss": "paper: λ_ce = 1; eel_logits raw: L_eel on y_hat = c^T·Sigmoid(m) with raw class logits (paper IV-B, "
                      "method.md); matcher/loss weights inherited from Mask2Anomaly",
         "clip": "inherited from Mask2Anomaly", "crop": "inherited from Mask2Anomaly", "paste_probability": "inherited from Mask2Anomaly",
         **_BLENDER_SOURCES,
         "crop_around_anomaly": "diffeel: the crop keeps a placed object, as for rpl+eel (Mask2Anomaly's own pastes may be "
                                "cropped away)", **{key: f"inherited from Mask2Anomaly ({source})" for key, source in _MASK2FORMER_SOURCES.items()}},
    ),
    "demo-closed": (
        TrainConfig("closed", steps=900, loss="closed", batch_size=8, optimizer="adamw", lr=3e-3, weight_decay=1e-4, clip=5.0),
        {"*": "CPU-sized demo setting (small DeepLab, 256×128 world frames), not a published one"},
    ),
    "demo-rpl": (
        TrainConfig("rpl", steps=400, loss="rpl", batch_size=8, optimizer="adamw", lr=3e-4, head_lr_multiplier=10.0, weight_decay=0.0,
                    clip=5.0, synthesizer="rpl-mix", anomaly_weight=0.05),
        {"*": "CPU-sized demo setting; the loss and the data mixing are RPL's"},
    ),
    "demo-rpl+eel": (
        TrainConfig("rpl+eel", steps=400, loss="rpl+eel", batch_size=8, optimizer="adamw", lr=3e-4, head_lr_multiplier=10.0,
                    weight_decay=0.0, clip=5.0, synthesizer="placement", anomaly_weight=0.05, alpha=1.0),
        {"*": "CPU-sized demo setting; the loss (Eq. 8, λ = 0.05, α = 1) is the paper's"},
    ),
}
RECIPES = tuple(PRESETS)


def preset(name: str, **overrides) -> TrainConfig:
    """The preset ``name`` with settings replaced by ``overrides``."""
    if name not in PRESETS:
        raise DiffeelError(f"unknown recipe {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name][0].with_overrides(overrides)


def describe(name: str, config: TrainConfig, notes: dict[str, str] | None = None) -> str:
    """The settings of a run, one per line, each with where its value comes from (``notes`` say
    why a value differs from the preset's, e.g. a stage that cannot run)."""
    import json
    from dataclasses import asdict

    sources = PRESETS.get(name, (None, {}))[1]
    default = PRESETS[name][0] if name in PRESETS else None
    lines = [f"# recipe {name}" + (f": {sources['*']}" if "*" in sources else "")]
    for key, value in asdict(config).items():
        note = sources.get(key, "")
        if default is not None and getattr(default, key) != value:
            note = (notes or {}).get(key, "overridden")
        lines.append(f"{key}: {json.dumps(value)}" + (f"  # {note}" if note else ""))
    return "\n".join(lines) + "\n"


class TrainingImages:
    """The training split of a world (images + train ids) in memory, and per-step batches.

    Per frame of a step: a horizontal flip (p = 0.5), a random ``crop`` (height, width), pasted
    anomalies (with ``paste_probability``), photometric jitter.
    """

    def __init__(self, folder, synthesizer=None, photometric: str = "jitter", crop=None, paste_probability: float = 1.0):
        folder = Path(folder)
        images = sorted((folder / "images").glob("*.png"))
        if not images:
            raise DiffeelError(f"{folder / 'images'} holds no training images")
        self.images = np.stack([read_image(p) for p in images])
        self.labels = np.stack([read_label(folder / "labels" / p.name) for p in images]).astype(np.uint8)
        self.synthesizer = synthesizer
        self.photometric = photometric
        self.paste_probability = paste_probability
        self.crop = tuple(crop) if crop else None
        if self.crop and (self.crop[0] > self.images.shape[1] or self.crop[1] > self.images.shape[2]):
            raise DiffeelError(f"crop {self.crop[0]}×{self.crop[1]} (height × width) is larger than the training frames "
                               f"({self.images.shape[1]}×{self.images.shape[2]}); set a smaller crop or none")

    def batch(self, seed: int, step: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = step_generator(seed, step)
        images, labels = [], []
        for index in rng.integers(len(self.images), size=size):
            image, label = augment_frame(self.images[index], self.labels[index], rng, crop=self.crop, synthesizer=self.synthesizer,
                                         paste_probability=self.paste_probability, photometric=self.photometric)
            images.append(image)
            labels.append(label)
        images_tensor = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255)
        return images_tensor, torch.from_numpy(np.stack(labels)).long()


def closed_loss(model, images, labels) -> dict:
    """Cross-entropy on the inlier classes; void and anything else (pasted anomalies) ignored."""
    targets = torch.where(labels < NUM_CLASSES, labels, torch.full_like(labels, VOID))
    return {"total": F.cross_entropy(model(images), targets, ignore_index=VOID)}


def residual_loss(config: TrainConfig):
    """The residual module's objective with the config's weights: RPL's loss (``anomaly_weight``
    on the energy hinge) or Eq. 8 (``anomaly_weight`` = λ, ``alpha``, ``inlier_entropy``)."""
    if config.loss not in ("rpl", "rpl+eel"):
        raise DiffeelError(f"loss {config.loss!r} is not a residual-module objective")

    def loss(model, images, labels) -> dict:
        out1, out2 = model(images)
        anomaly_mask, inlier_mask = losses.split_train_labels(labels)
        if config.loss == "rpl":
            return losses.rpl_baseline_total_loss(out2, out1, anomaly_mask, inlier_mask, weight=config.anomaly_weight)
        return losses.rpl_eel_total_loss(out2, out1, anomaly_mask, inlier_mask, weight=config.anomaly_weight, alpha=config.alpha,
                                         inlier_entropy=config.inlier_entropy)

    return loss


def loss_for(config: TrainConfig):
    """The loss function a config asks for."""
    if config.loss == "closed":
        return closed_loss
    if config.loss in ("rpl", "rpl+eel"):
        return residual_loss(config)
    return mask_model_loss(config)


def mask_model_loss(config: TrainConfig):
    """Mask2Anomaly's objective (``m2a``) or Eq. 10 (``m2a+eel``) with the config's weights."""
    from .mask_criterion import mask2anomaly_loss

    def loss(model, images, labels) -> dict:
        return mask2anomaly_loss(model(images), labels, config)

    return loss


def closed_model(seed: int):
    torch.manual_seed(seed)
    model = SmallDeepLab()
    return model, [{"params": list(model.parameters())}]


def residual_model(host: torch.nn.Module, seed: int, head_lr_multiplier: float = 10.0):
    """The RPL module around a frozen ``host``; ``atten_aspp_final`` in its own optimizer group."""
    torch.manual_seed(seed)
    model = RPLModel(host)
    return model, residual_parameter_groups(model, head_lr_multiplier)


def residual_parameter_groups(model: torch.nn.Module, head_lr_multiplier: float) -> list[dict]:
    """What trains, nothing of the host. RPL's module: ``atten_aspp_final`` in its own group at
    ``head_lr_multiplier``× (RPL trains it from scratch; the rest starts as the host's ASPP). An
    adapter: all of it at ``head_lr_multiplier``×, as all of it starts from scratch."""
    if isinstance(model, ResidualAdapter):
        return [{"params": list(model.residual_adapter.parameters()), "lr_multiplier": head_lr_multiplier}]
    head = list(model.residual_block.atten_aspp_final.parameters())
    rest = [p for name, p in model.residual_block.named_parameters() if not name.startswith("atten_aspp_final")]
    return [{"params": rest}, {"params": head, "lr_multiplier": head_lr_multiplier}]


def with_residual(model: torch.nn.Module, adapter_point: str | None) -> torch.nn.Module:
    """``model`` if it carries RPL's residual module (``rpl_wrn38``, ``small_rpl``) or an adapter;
    otherwise a :class:`ResidualAdapter` around it at ``adapter_point`` (None: the host's own point)."""
    if hasattr(model, "residual_block") or isinstance(model, ResidualAdapter):
        return model
    if is_mask_model(model):
        raise DiffeelError("the rpl and rpl+eel recipes train a residual on a per-pixel segmenter; a mask model trains "
                           "with m2a or m2a+eel")
    return ResidualAdapter(model, adapter_point)


def mask2anomaly_stage_one(backbone, *, allow_pickle: bool = False, **options) -> torch.nn.Module:
    """The ``m2a-inlier`` start: ``mask2anomaly_r50`` with its backbone loaded strictly from
    ``backbone`` (Barlow Twins' ``resnet50.pth`` in torchvision layout, detectron2 layout, or full
    model keys), the rest initialised as the model does."""
    from ..models import create_model
    from ..models.factory import read_model_state
    from ..models.mask2anomaly import load_backbone_weights

    model = create_model("mask2anomaly_r50", **options)
    load_backbone_weights(model, read_model_state(backbone, allow_pickle=allow_pickle), str(backbone))
    return model


def stage_one_warning(recipe: str, checkpoint, *, allow_pickle: bool = False) -> str | None:
    """Why ``checkpoint`` is the wrong start for ``m2a`` / ``m2a+eel``, or None: both fine-tune a
    stage-1 (inlier) model, which a diffeel ``m2a-inlier`` run writes; Mask2Anomaly's released
    ``model_final.pth`` is the end of its stage 2, already tuned with the contrastive loss that
    Eq. 10 replaces."""
    if recipe not in ("m2a", "m2a+eel"):
        return None
    config = load_state(checkpoint, allow_pickle=allow_pickle).get("config")
    if isinstance(config, dict) and config.get("recipe") == "m2a-inlier":
        return None
    return (f"{checkpoint} is not an m2a-inlier checkpoint. If it is Mask2Anomaly's released model_final.pth, it has "
            f"already been fine-tuned with the contrastive loss (its stage 2), which {recipe} {'replaces with Eq. 10' if recipe == 'm2a+eel' else 'applies again'}; "
            "the published recipe starts from a stage-1 inlier model: train one with --recipe m2a-inlier --backbone resnet50.pth")


NORM_MODULES = (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.LocalResponseNorm)


def mask_parameter_groups(model: torch.nn.Module, decay_norm_and_embedding: bool = True) -> list[dict]:
    """The trainable parameters (the backbone is frozen by the model); with
    ``decay_norm_and_embedding=False``, those of normalisation and embedding modules in a group
    without weight decay, as Mask2Former's ``build_optimizer`` sets them (by module type)."""
    no_decay = set()
    if not decay_norm_and_embedding:
        for module in model.modules():
            if isinstance(module, (*NORM_MODULES, torch.nn.Embedding)):
                no_decay.update(id(parameter) for parameter in module.parameters(recurse=False))
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    groups = [{"params": [p for p in trainable if id(p) not in no_decay]}]
    if no_decay:
        groups.append({"params": [p for p in trainable if id(p) in no_decay], "weight_decay": 0.0})
    return groups


def load_small_host(checkpoint) -> SmallDeepLab:
    """A closed small DeepLab from a ``demo-closed`` run's checkpoint (strict load)."""
    path = Path(checkpoint)
    path = path / "checkpoint.pt" if path.is_dir() else path
    state = load_state(path)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise DiffeelError(f"{path} is not a diffeel training checkpoint (no 'model' state)")
    if state.get("config", {}).get("loss", "closed") != "closed":
        raise DiffeelError(f"{path} holds a {state['config'].get('loss')} model, not a closed host; give the closed run's checkpoint")
    host = SmallDeepLab()
    try:
        host.load_state_dict(state["model"], strict=True)
    except RuntimeError as error:
        first = str(error).split("\n")[1].strip() if "\n" in str(error) else str(error)
        raise DiffeelError(f"{path} does not fit the small DeepLab host: {first}") from None
    return host.eval()


def harmonizer_stages(config: TrainConfig, weights=None) -> tuple[TrainConfig, str | None]:
    """The config a run really uses for the blender, and a note when it differs from the one asked
    for: DoveNet needs its weights (``--harmonizer``), so without them a preset asking for
    ``illumination+dovenet`` runs (and records) ``illumination`` alone. Weights for a config whose
    blender has no DoveNet stage are an error, not silently unused."""
    wants_dovenet = config.synthesizer == "placement" and config.harmonizer.endswith("dovenet")
    if weights is not None and not wants_dovenet:
        raise DiffeelError(f"--harmonizer weights are for a placement recipe whose harmonizer includes dovenet; {config.recipe} "
                           f"has synthesizer {config.synthesizer!r} and harmonizer {config.harmonizer!r}")
    if wants_dovenet and weights is None:
        return config.with_overrides({"harmonizer": "illumination"}), (
            "DoveNet harmonization not run: no --harmonizer weights (DoveNet's latest_net_G.pth) were given, so pasted "
            "objects are blended by illumination matching only")
    return config, None


def _blender_as_run(config: TrainConfig, weights, context: Distributed) -> TrainConfig:
    """:func:`harmonizer_stages`, its note said once on stderr: the run records the stages it runs."""
    config, note = harmonizer_stages(config, weights)
    if note and context.is_main:
        print(f"diffeel train: note: {note}.", file=sys.stderr)
    return config


def build_synthesizer(config: TrainConfig, objects_folder=None, source=None, harmonizer_weights=None, camera=None):
    """The config's anomaly synthesizer over ``source``, or over ``object_pool`` of the bank in
    ``objects_folder``; a placement synthesizer blends with the stages ``config.harmonizer`` names
    (DoveNet from ``harmonizer_weights``, run on the CPU of the data-loading processes) and sizes
    objects with ``camera`` (None: the Cityscapes camera scaled to each frame)."""
    if config.synthesizer == "none":
        return None
    from ..synth import RPL_SCALES, CopyPasteSynthesizer, ObjectBank, RPLMixSynthesizer

    bank = source
    if bank is None:
        bank = ObjectBank.from_folder(objects_folder)
        if config.object_pool < 1:
            bank = bank.subset(config.object_pool, seed=config.seed)
    if config.synthesizer == "rpl-mix":
        # Mask2Anomaly pastes its COCO outliers at their native size; RPL rescales them
        scales = (1.0,) if config.loss in MASK_LOSSES else RPL_SCALES
        return RPLMixSynthesizer(bank, objects_per_image=config.objects_per_image, scales=scales)
    if config.harmonizer == "illumination+dovenet":
        if harmonizer_weights is None:
            raise DiffeelError("the harmonizer setting asks for DoveNet: give its weights with --harmonizer latest_net_G.pth")
        from ..synth.harmonize import make_blender

        blender = make_blender(illumination=True, dovenet=harmonizer_weights, device="cpu")
    else:
        blender = config.harmonizer == "illumination"
    return CopyPasteSynthesizer(bank, objects_per_image=config.objects_per_image, camera=camera, harmonize=blender,
                                search=config.placement)


def resolve_device(name: str) -> torch.device:
    """``torch.device(name)``; asking for CUDA where there is none is an error, not a crash later."""
    return Distributed().device(name)


def train_on_world(config: TrainConfig, world_train, out_dir, host: torch.nn.Module | None = None, device: str = "cpu",
                   progress: bool = True, stop_after: int | None = None, validate=None, objects=None,
                   harmonizer=None) -> torch.nn.Module:
    """Train ``config`` on a world's training split (``world make``'s ``train/``), resumably, with
    objects from ``objects`` (any bank folder: diffusion objects, COCO cut-outs) or the world's own.

    ``closed`` trains the small DeepLab; ``rpl`` / ``rpl+eel`` train the RPL module around the
    frozen ``host``. Batches are channels-last (about 15 % faster convolutions on CPU).
    """
    if config.loss in MASK_LOSSES:
        raise DiffeelError(f"the {config.recipe} recipe trains the Mask2Anomaly host on Cityscapes: give --cityscapes and "
                           "--host mask2anomaly_r50")
    config = _blender_as_run(config, harmonizer, Distributed())
    loss = loss_for(config)
    world_train = Path(world_train)
    if not (world_train / "images").is_dir():
        raise DiffeelError(f"{world_train} is not a world's training split (no images/); make one with diffeel world make")
    device = resolve_device(device)
    if config.loss == "closed":
        model, groups = closed_model(config.seed)
    else:
        if host is None:
            raise DiffeelError(f"the {config.loss} recipe trains around a closed host; give its checkpoint")
        model, groups = residual_model(host.to(device), config.seed, config.head_lr_multiplier)
    data = TrainingImages(world_train, build_synthesizer(config, objects or world_train / "objects", harmonizer_weights=harmonizer), crop=config.crop,
                          paste_probability=config.paste_probability, photometric=config.photometric)

    def batch(step):
        images, labels = data.batch(config.seed, step, config.batch_size)
        return images.to(device).contiguous(memory_format=torch.channels_last), labels.to(device)

    model = model.to(device, memory_format=torch.channels_last)
    train(config, model, groups, batch, loss, out_dir, progress=progress, stop_after=stop_after, validate=validate)
    return model


def outlier_source(config: TrainConfig, *, coco=None, objects=None, inlier_frames: int):
    """Where pasted objects come from: an object bank folder (world debris, diffusion objects, any
    cut-outs), COCO filtered as RPL / Meta-OoD do (a new proxy set of ``inlier_frames`` images of it
    every epoch, as RPL's COCO proxy size is the number of Cityscapes training frames), or both
    pooled, as the paper's 44,500 objects pool generated and COCO ones; each times ``object_pool``."""
    if coco is None and objects is None:
        raise DiffeelError("give the outlier objects: --coco (a COCO root), --objects (an object bank folder), or both")
    sources = []
    if objects is not None:
        from ..synth import ObjectBank

        bank = ObjectBank.from_folder(objects, preload=False)
        sources.append(bank.subset(config.object_pool, seed=config.seed) if config.object_pool < 1 else bank)
    if coco is not None:
        from ..synth.coco import CocoOutliers

        sources.append(CocoOutliers(coco, pool=config.object_pool, proxy_size=inlier_frames, seed=config.seed))
    return sources[0] if len(sources) == 1 else PooledSource(sources)


class PooledSource:
    """Several object sources as one pool: each draw picks an object uniformly from all of them."""

    def __init__(self, sources):
        self.sources = list(sources)
        self.sizes = np.array([len(source) for source in self.sources])

    def __len__(self) -> int:
        return int(self.sizes.sum())

    def for_epoch(self, epoch: int) -> "PooledSource":
        """The pool of each source's objects of ``epoch`` (see :meth:`Synthesizer.for_epoch`)."""
        return PooledSource([source.for_epoch(epoch) if hasattr(source, "for_epoch") else source for source in self.sources])

    def sample(self, rng):
        index = int(rng.integers(len(self)))
        which = int(np.searchsorted(np.cumsum(self.sizes), index, side="right"))
        return self.sources[which][index - int(self.sizes[:which].sum())]


class StepBatches:
    """``batch_at(step)`` for :func:`~diffeel.train.loop.train` from a dataset of ``(epoch, index)``
    items: a DataLoader over :class:`EpochBatches` from the first step asked for, with ``workers``
    processes decoding and augmenting ahead; images normalised for the model, channels-last."""

    def __init__(self, dataset, config: TrainConfig, context: Distributed, device: torch.device, normalization: str, workers: int):
        self.dataset, self.config, self.context, self.device = dataset, config, context, device
        self.normalization, self.workers = normalization, workers
        self.iterator, self.next_step = None, None

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        from torch.utils.data import DataLoader

        from ..models import normalise

        if self.iterator is None or step != self.next_step:
            batches = EpochBatches(len(self.dataset), self.config.batch_size, self.config.steps, self.config.seed, start=step,
                                   rank=self.context.rank, world_size=self.context.world_size)
            self.iterator = iter(DataLoader(self.dataset, batch_sampler=batches, num_workers=self.workers,
                                            pin_memory=self.device.type == "cuda", persistent_workers=False))
        self.next_step = step + 1
        try:
            images, labels = next(self.iterator)
        except DiffeelError as error:
            raise DiffeelError(worker_sentence(str(error))) from None
        images = normalise(images.to(self.device, non_blocking=True).float(), self.normalization)
        return images.contiguous(memory_format=torch.channels_last), labels.to(self.device, non_blocking=True)


def worker_sentence(message: str) -> str:
    """The sentence a DataLoader worker raised, without the wrapper PyTorch puts around it
    ("Caught DiffeelError in DataLoader worker process 1. Original Traceback …")."""
    if not message.startswith("Caught ") or "Original Traceback" not in message:
        return message
    marker = "DiffeelError: "
    last = message.rstrip().splitlines()[-1]
    return last.split(marker, 1)[1] if marker in last else message


def crop_padding_note(config: TrainConfig, frames) -> str | None:
    """What a crop larger than the frames (those that know their size, e.g. CamVid's 480×360) does
    when no resize comes first: each crop is the frame padded (image black, labels void); else None."""
    sizes = {(frame.height, frame.width) for frame in frames if hasattr(frame, "height")}
    if not config.crop or config.resize_short_side or not sizes:
        return None
    height, width = min(h for h, _ in sizes), min(w for _, w in sizes)
    if config.crop[0] <= height and config.crop[1] <= width:
        return None
    share = 1 - min(height, config.crop[0]) * min(width, config.crop[1]) / (config.crop[0] * config.crop[1])
    return (f"the {config.crop[0]}x{config.crop[1]} crop (height x width) is larger than the {height}x{width} frames, so every "
            f"crop is padded (image black, labels void; {share:.0%} of it padding); --set crop=[{min(height, config.crop[0])},"
            f"{min(width, config.crop[1])}] crops within the frame")


def write_pseudo_labels(make_model, images, out_dir, device: torch.device, context: Distributed = Distributed(),
                        progress: bool = True) -> PseudoLabelledFolder:
    """Train ids for a folder of unlabelled road images: the frozen host's own prediction (``out1``
    for a residual model), written once to ``out_dir/pseudo_labels/<stem>.png`` by the main process
    (a rerun keeps them). Placement finds the road in them; the consistency term needs no more, as
    it takes its targets from ``out1`` anyway."""
    from tqdm import tqdm

    from ..data.images import image_files, read_image, write_image_atomic
    from ..models import input_normalization, normalise

    folder = PseudoLabelledFolder(Path(images), Path(out_dir) / "pseudo_labels")
    files = image_files(folder.images)
    if context.is_main:
        missing = [path for path in files if not (folder.labels / f"{path.stem}.png").is_file()]
        if missing:
            host = make_model().to(device).eval()
            for path in tqdm(missing, desc="pseudo-labels", unit="image", disable=not progress):
                rgb = torch.from_numpy(read_image(path).copy()).permute(2, 0, 1)[None].float().to(device)
                with torch.no_grad():
                    output = host(normalise(rgb, input_normalization(host)))
                logits = output.host_logits if hasattr(output, "host_logits") else output
                if logits.shape[-2:] != rgb.shape[-2:]:
                    logits = F.interpolate(logits, size=rgb.shape[-2:], mode="bilinear", align_corners=False)
                write_image_atomic(folder.labels / f"{path.stem}.png", logits.argmax(1)[0].to(torch.uint8).cpu().numpy())
    context.barrier()
    return folder


def train_on_cityscapes(config: TrainConfig, cityscapes, out_dir, make_model, *, coco=None, objects=None, harmonizer=None,
                        device: torch.device, context: Distributed = Distributed(), workers: int = 0, validate=None,
                        progress: bool = True, stop_after: int | None = None, inliers: str = "cityscapes") -> dict:
    """Train the residual module of ``make_model()`` (an RPL host: ``rpl_wrn38``, …; built after the
    data is found, so a wrong path fails before a large checkpoint loads) on Cityscapes' train split
    with outliers from COCO or an object bank, as ``config`` says, on this process's share of each
    global batch. Placement pastes on the full frame (the camera's view) before cropping; RPL's
    mixing pastes into the crop, as RPL does. ``inliers="camvid"``: ``cityscapes`` is a CamVid
    root instead (SegNet's layout, labels mapped to Cityscapes train ids); ``inliers="images"``: a
    folder of unlabelled road images, labelled by the host itself (:func:`write_pseudo_labels`)."""
    from ..models import input_normalization

    if config.loss == "closed":
        raise DiffeelError(f"the {config.recipe} recipe trains a closed-set host, which diffeel trains on worlds only; "
                           "use rpl, rpl+eel, m2a or m2a+eel on Cityscapes")
    config = _blender_as_run(config, harmonizer, context)
    loss = loss_for(config)
    if inliers == "images":
        if config.loss in MASK_LOSSES:
            raise DiffeelError("unlabelled images train the rpl and rpl+eel recipes (a residual on the host's own "
                               "predictions); Mask2Anomaly's recipes need labelled Cityscapes")
        cityscapes = write_pseudo_labels(make_model, cityscapes, out_dir, device, context, progress)
    # placement needs the camera's whole view, and Mask2Anomaly pastes before augmenting: both paste first
    dataset = INLIER_DATASETS[inliers](cityscapes, config.seed, crop=config.crop, paste_probability=config.paste_probability,
                                       paste_before_crop=config.synthesizer == "placement" or config.loss in MASK_LOSSES,
                                       crop_around_anomaly=config.crop_around_anomaly,
                                       resize=(config.resize_short_side, config.resize_max_size) if config.resize_short_side else None,
                                       photometric=config.photometric)
    note = crop_padding_note(config, dataset.frames)
    if note and context.is_main:
        print(f"diffeel train: note: {note}.", file=sys.stderr)
    source = None if config.synthesizer == "none" else outlier_source(config, coco=coco, objects=objects, inlier_frames=len(dataset))
    camera = CAMVID_CAMERA if inliers == "camvid" else None
    dataset.options["synthesizer"] = build_synthesizer(config, source=source, harmonizer_weights=harmonizer, camera=camera)
    torch.manual_seed(config.seed)  # the residual module's Kaiming start is seeded
    model = make_model()
    if config.loss in MASK_LOSSES:
        if not is_mask_model(model):
            raise DiffeelError(f"the {config.recipe} recipe trains a mask model; use --host mask2anomaly_r50")
        groups = mask_parameter_groups(model, config.decay_norm_and_embedding)
    else:
        model = with_residual(model, config.adapter_point)
        groups = residual_parameter_groups(model, config.head_lr_multiplier)
        # a closed-set start (NVIDIA's file) scores out1; this run trains the residual module, so
        # validation scores out2, what is being trained
        model.residual_trained = True
    model = model.to(device, memory_format=torch.channels_last)
    batch_at = StepBatches(dataset, config, context, device, input_normalization(model), workers)
    return train(config, model, groups, batch_at, loss, out_dir, progress=progress, stop_after=stop_after, context=context,
                 validate=validate)
