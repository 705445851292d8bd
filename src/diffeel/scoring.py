"""Run a segmentation model over a benchmark and write anomaly score maps that ``diffeel eval`` reads.

Per frame: the image as RGB / 255 (ImageNet-normalised unless the model asks otherwise), at full
resolution or ``size`` (or, with ``protocol="m2a"``, resized as Mask2Anomaly's evaluation does:
short side 1024, long side at most 2048, PIL bilinear); the model's scoring logits (RPL's
``out2``) resized to the label's resolution; each requested score (Eqs. 2, 4–6); optionally the
average with the scores of the left-right flip (``flip``, flipped back) and RPL's Gaussian blur;
one file per score and frame, ``{out}/{score}/{frame id}.npy``, written atomically — or, with
``toolkit=(method, dataset)``, the SegmentMeIfYouCan toolkit's ``{out}/anomaly_p/{method}/{dataset}/
{frame id}.hdf5`` (one score). A frame without a label (a withheld test frame) is scored at its
image's resolution.

Frames are grouped into batches of consecutive frames of one size *before* anything is split
between processes or skipped, and batch ``i`` runs on rank ``i mod world size``: every batch is
computed the same way whatever the number of processes, and a resumed run recomputes unfinished
batches whole. ``score_config.json`` records the settings; a rerun with other settings is refused.

Saved logits (:func:`score_logits_files`): one score per file of ``(C, H, W)`` or ``(B, C, H, W)``
logits, one map per image, finished maps kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data.arrays import ARRAY_SUFFIXES, load_array, save_array_atomic
from .data.benchmarks import Frame
from .data.images import image_size
from .data.toolkit_layout import check_method_name, toolkit_maps_folder, write_toolkit_map
from .distributed import Distributed
from .errors import DiffeelError
from .metrics import PixelMetrics
from .models import input_normalization, is_mask_model, normalise, scoring_logits
from .models.loading import PRECISIONS, forward_precision
from .models.mask2anomaly_inference import OFFICIAL_SCRIPT, mask_wise_maps, official_resize
from .scores import MASK_CLASS_WEIGHTS, SCORES, compute_score, gaussian_smooth

CONFIG_NAME = "score_config.json"
INPUT_PROTOCOLS = ("native", "m2a")


@dataclass(frozen=True)
class ScoreSettings:
    scores: tuple[str, ...] = tuple(SCORES)
    alpha: float = 1.0
    smooth: str = "none"  # "rpl": RPL's 7-tap σ = 1 blur of the score map
    size: tuple[int, int] | None = None  # (height, width) the model sees; None = the image's own
    batch: int = 1
    dtype: str = "float16"
    inference: str = "default"  # mask models: "anomaly_inference" = Mask2Anomaly's official script's score
    precision: str = "float32"  # the forward's: float32, bfloat16 (autocast) or float16 (autocast, CUDA)
    mask_logits: str = "raw"  # mask models: the class weights of the logits energy / entropy / EEL use (msp: always softmax)
    protocol: str = "native"  # the input's size: "native" (or ``size``), "m2a" (Mask2Anomaly's evaluation resizing)
    flip: bool = False  # average each score with the left-right flip's (Mask2Anomaly's evaluation does)
    toolkit: tuple[str, str] | None = None  # (method, dataset): the SMIYC toolkit's layout, one score, float16

    def __post_init__(self):
        if self.toolkit is not None:
            check_method_name(self.toolkit[0])
            if self.dtype != "float16":
                raise DiffeelError("the SegmentMeIfYouCan toolkit stores float16 maps; --layout smiyc takes no --dtype float32")
            if self.inference != OFFICIAL_SCRIPT and len(self.scores) != 1:
                raise DiffeelError(f"the SegmentMeIfYouCan layout holds one map per frame; name the one score to write "
                                   f"with --scores (one of {', '.join(SCORES)})")
        if self.protocol not in INPUT_PROTOCOLS:
            raise DiffeelError(f"protocol must be one of {', '.join(INPUT_PROTOCOLS)}, got {self.protocol!r}")
        if self.protocol == "m2a" and self.size is not None:
            raise DiffeelError("--protocol m2a resizes as Mask2Anomaly's evaluation does; it takes no --size")
        if self.mask_logits not in MASK_CLASS_WEIGHTS:
            raise DiffeelError(f"mask_logits must be one of {', '.join(MASK_CLASS_WEIGHTS)}, got {self.mask_logits!r}")
        if self.precision not in PRECISIONS:
            raise DiffeelError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.inference not in ("default", OFFICIAL_SCRIPT):
            raise DiffeelError(f"inference must be default or {OFFICIAL_SCRIPT}, got {self.inference!r}")
        if self.inference == OFFICIAL_SCRIPT:
            if self.smooth != "none" or self.size is not None or self.protocol != "native" or self.flip:
                raise DiffeelError(f"--inference {OFFICIAL_SCRIPT} resizes and scores as Mask2Anomaly's script does; "
                                   "it takes no --smooth, --size, --protocol or --flip")
            object.__setattr__(self, "scores", (OFFICIAL_SCRIPT,))
            return
        unknown = [s for s in self.scores if s not in SCORES]
        if unknown or not self.scores:
            raise DiffeelError(f"unknown score {unknown[0]!r}; choose from {', '.join(SCORES)}" if unknown else "no score was asked for")
        if self.smooth not in ("none", "rpl"):
            raise DiffeelError(f"smooth must be none or rpl, got {self.smooth!r}")


def maps_folder(out_dir: Path, settings: ScoreSettings) -> Path:
    """The folder a run's maps and its ``score_config.json`` go to."""
    return toolkit_maps_folder(out_dir, *settings.toolkit) if settings.toolkit else out_dir


def score_target(folder: Path, frame_id: str, score: str, settings: ScoreSettings) -> Path:
    """The file a frame's map of ``score`` goes to (the toolkit's layout holds one score)."""
    return folder / f"{frame_id}.hdf5" if settings.toolkit else folder / score / f"{frame_id}.npy"


def _map_size(frame: Frame) -> tuple[int, int]:
    """``(width, height)`` of a frame's score maps: its label's, or its image's without a label."""
    return image_size(frame.label_path if frame.label_path is not None else frame.image_path)


def plan_batches(frames: list[Frame], batch: int) -> list[list[int]]:
    """Consecutive frames whose images and score maps share their sizes, at most ``batch`` per group."""
    groups: list[list[int]] = []
    last_sizes = None
    for index, frame in enumerate(frames):
        if frame.image_path is None:
            raise DiffeelError(f"frame {frame.id} has no image; give the image root with --images")
        sizes = (image_size(frame.image_path), _map_size(frame))
        if groups and sizes == last_sizes and len(groups[-1]) < batch:
            groups[-1].append(index)
        else:
            groups.append([index])
        last_sizes = sizes
    return groups


def _check_config(out_dir: Path, config: dict) -> None:
    """A folder resumed must hold maps of the same settings (every process checks, none writes)."""
    path = out_dir / CONFIG_NAME
    if not path.exists():
        return
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        raise DiffeelError(f"{path} is damaged; remove it to score into {out_dir} again") from None
    if previous != config:
        changed = sorted(k for k in set(config) | set(previous) if config.get(k) != previous.get(k))
        raise DiffeelError(f"{out_dir} holds score maps made with other settings ({', '.join(changed)}); use another --out, or --overwrite")


def _write_config(out_dir: Path, config: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / CONFIG_NAME
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(config, indent=2) + "\n")
    temporary.replace(path)


def score_frames(model: torch.nn.Module, frames: list[Frame], out_dir, settings: ScoreSettings, *, provenance: dict,
                 device: torch.device, context: Distributed = Distributed(), overwrite: bool = False,
                 progress: bool = True) -> dict:
    """Score ``frames`` with ``model`` into ``out_dir`` (this process's share of them). Returns
    counts of frames scored and kept."""
    from tqdm import tqdm

    if settings.inference == OFFICIAL_SCRIPT and not is_mask_model(model):
        raise DiffeelError(f"--inference {OFFICIAL_SCRIPT} is Mask2Anomaly's scoring; the model is not a mask model")
    forward_precision(device, settings.precision)  # float16 on a CPU fails here, before anything is written
    out_dir = Path(out_dir)
    config = {**provenance, "scores": list(settings.scores), "inference": settings.inference, "alpha": settings.alpha, "smooth": settings.smooth,
              "size": list(settings.size) if settings.size else None, "dtype": settings.dtype, "precision": settings.precision,
              "frames": len(frames)}
    if is_mask_model(model) and settings.inference != OFFICIAL_SCRIPT:
        config["mask_logits"] = settings.mask_logits  # maps made with the other class weights must not mix with these
    if settings.protocol != "native" or settings.flip:  # recorded when set, so folders made before these options still resume
        config.update(protocol=settings.protocol, flip=settings.flip)
    if settings.toolkit:
        config.update(layout="smiyc", method=settings.toolkit[0], dataset=settings.toolkit[1])
    folder = maps_folder(out_dir, settings)
    if not overwrite:
        _check_config(folder, config)
    resumed = (folder / CONFIG_NAME).exists() and not overwrite
    if context.is_main:
        if overwrite:
            _remove_earlier_maps(folder)  # the folder becomes this run's: no map of another run stays
        _write_config(folder, config)
    context.barrier()  # the settings are checked and recorded before anyone scores
    batches = plan_batches(frames, settings.batch)[context.rank :: context.world_size]
    how = input_normalization(model)
    model = model.to(device, memory_format=torch.channels_last).eval()
    scored = kept = 0
    try:
        with tqdm(total=sum(map(len, batches)), desc="scoring", unit="frame", disable=not progress or not context.is_main) as bar:
            for indices in batches:
                batch_frames = [frames[i] for i in indices]
                if not overwrite and all(score_target(folder, f.id, name, settings).exists() for f in batch_frames for name in settings.scores):
                    kept += len(indices)
                    bar.update(len(indices))
                    continue
                _score_batch(model, batch_frames, folder, settings, how, device)
                scored += len(indices)
                bar.update(len(indices))
    except BaseException:
        if context.is_main and not resumed and not any(folder.glob("*.hdf5" if settings.toolkit else "*/*.npy")):
            (folder / CONFIG_NAME).unlink(missing_ok=True)  # no map was written: the folder holds nothing of this run
        raise
    context.barrier()
    return {"scored": scored, "kept": kept}


def _remove_earlier_maps(folder: Path) -> None:
    """Every map an earlier run can have written into ``folder``, removed."""
    import shutil

    for name in (*SCORES, OFFICIAL_SCRIPT):
        if (folder / name).is_dir():
            shutil.rmtree(folder / name)
    for path in folder.glob("*.hdf5"):
        path.unlink()


def batch_score_maps(model, frames: list[Frame], settings: ScoreSettings, how: str, device) -> dict[str, np.ndarray]:
    """``{score: (N, H, W) float32 maps}`` at label resolution (image resolution for a frame without
    a label) for frames of one image and map size.

    For a mask model ``msp`` is Eq. 3's mask-wise MSP (``1 - max_c`` of the softmax-weighted class
    map, which is not normalised), the other scores come from the mask-wise logits (raw class
    logits unless ``settings.mask_logits = "softmax"``); ``settings.inference =
    "anomaly_inference"`` runs Mask2Anomaly's official scoring instead (its own resizing and flip)."""
    if settings.inference == OFFICIAL_SCRIPT:
        return {OFFICIAL_SCRIPT: _official_maps(model, frames, settings.precision)}
    rgb = np.stack([frame.load_image() for frame in frames])
    if settings.protocol == "m2a":
        rgb = np.stack([official_resize(image) for image in rgb])
    label_width, label_height = _map_size(frames[0])
    maps = _score_maps(model, rgb, settings, how, device, (label_height, label_width))
    if settings.flip:  # the flip's maps, flipped back, averaged in as Mask2Anomaly's evaluation does
        flipped = _score_maps(model, rgb[:, :, ::-1], settings, how, device, (label_height, label_width))
        maps = {name: (score_maps + flipped[name][:, :, ::-1]) / 2 for name, score_maps in maps.items()}
    for name, score_maps in maps.items():
        if not np.isfinite(score_maps).all():
            raise DiffeelError(f"the model gave non-finite {name} scores on frame {frames[0].id}; its logits contain NaN or inf")
    return maps


def _score_maps(model, rgb: np.ndarray, settings: ScoreSettings, how: str, device, label_size: tuple[int, int]) -> dict[str, np.ndarray]:
    """The score maps of a batch of ``(N, H, W, 3)`` uint8 images at ``label_size``."""
    label_height, label_width = label_size
    images = torch.from_numpy(np.ascontiguousarray(rgb)).to(device).permute(0, 3, 1, 2).float()
    if settings.size is not None:
        images = F.interpolate(images, size=settings.size, mode="bilinear", align_corners=False)
    with torch.inference_mode():
        inputs = normalise(images, how).contiguous(memory_format=torch.channels_last)
        class_maps = _forward_logits(model, inputs, settings)
        for key, logits in class_maps.items():
            if logits.shape[-2:] != (label_height, label_width):
                logits = F.interpolate(logits, size=(label_height, label_width), mode="bilinear", align_corners=False)
            class_maps[key] = logits.contiguous()  # scores reduce over classes: the same layout as saved logits gives the same bits
        maps = {}
        for name in settings.scores:
            if name == "msp" and is_mask_model(model):
                score_map = 1.0 - class_maps["eq3"].amax(dim=1)  # Eq. 3
            else:
                score_map = compute_score(name, class_maps["logits"], alpha=settings.alpha, dim=1)
            if settings.smooth == "rpl":
                score_map = gaussian_smooth(score_map)
            maps[name] = score_map.cpu().numpy()
    return maps


def _forward_logits(model, inputs: torch.Tensor, settings: ScoreSettings) -> dict[str, torch.Tensor]:
    """``{"logits": what the scores use}`` at the input size and, for a mask model asked for
    ``msp``, ``"eq3"``: the softmax-weighted class map of Eq. 3 (both maps from one forward)."""
    if not is_mask_model(model):
        return {"logits": scoring_logits(model, inputs, settings.precision)}
    with forward_precision(inputs.device, settings.precision):
        outputs = model(inputs)
    wanted = {"logits": settings.mask_logits} if any(name != "msp" for name in settings.scores) else {}
    if "msp" in settings.scores:
        wanted["eq3"] = "softmax"
    class_maps = mask_wise_maps(outputs, outputs["image_size"], class_weights=tuple(wanted.values()))
    return {key: class_maps[weighting] for key, weighting in wanted.items()}


def _official_maps(model, frames: list[Frame], precision: str) -> np.ndarray:
    """Mask2Anomaly's official score of each frame (BGR in, as its script reads images), at label size."""
    import cv2

    from .models.mask2anomaly_inference import official_anomaly_score

    maps = []
    for frame in frames:
        image_bgr = np.ascontiguousarray(frame.load_image()[..., ::-1])
        score = np.asarray(official_anomaly_score(model, image_bgr, precision=precision), dtype=np.float32)
        label_width, label_height = _map_size(frame)
        if score.shape != (label_height, label_width):
            score = cv2.resize(score, (label_width, label_height), interpolation=cv2.INTER_LINEAR)
        maps.append(score)
    maps = np.stack(maps)
    if not np.isfinite(maps).all():
        raise DiffeelError(f"the model gave non-finite scores on frame {frames[0].id}")
    return maps


def _score_batch(model, frames: list[Frame], folder: Path, settings: ScoreSettings, how: str, device) -> None:
    for name, score_maps in batch_score_maps(model, frames, settings, how, device).items():
        for frame, score_map in zip(frames, score_maps):
            target = score_target(folder, frame.id, name, settings)
            if settings.toolkit:
                write_toolkit_map(target, score_map)
            else:
                save_array_atomic(target, score_map.astype(settings.dtype))


def validate_model(model: torch.nn.Module, frames: list[Frame], scores=("energy", "eel"), *, device, size=None,
                   protocol: str = "pooled") -> dict[str, float]:
    """Pixel AUPRC / FPR95 (percent) of ``model``'s scores on held-out ``frames``, in memory: the
    validation hook of training (``{"eel/auprc": …, "eel/fpr95": …, …}``)."""
    settings = ScoreSettings(scores=tuple(scores), size=size, dtype="float32")
    how = input_normalization(model)
    metrics = {name: PixelMetrics(protocol) for name in scores}
    for indices in plan_batches(frames, 1):
        frame = frames[indices[0]]
        label = frame.load_label()
        for name, score_maps in batch_score_maps(model, [frame], settings, how, device).items():
            metrics[name].update(score_maps[0], label)
    results = {}
    for name, accumulated in metrics.items():
        summary = accumulated.compute()
        results[f"{name}/auprc"] = 100 * float(summary["auprc"])
        results[f"{name}/fpr95"] = 100 * float(summary["fpr95"])
    return results


def find_logits_files(paths) -> list[Path]:
    """The logits files among ``paths`` (files, or folders whose array files are taken in name
    order); their stems name the maps, so two inputs may not share one."""
    inputs: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            inputs.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in ARRAY_SUFFIXES))
        elif path.is_file():
            inputs.append(path)
        else:
            raise DiffeelError(f"{path} does not exist")
    if not inputs:
        raise DiffeelError("no logits files found (expected .npy, .npz, .pt or .pth files)")
    stems = [p.stem for p in inputs]
    if len(set(stems)) != len(stems):
        duplicate = next(s for s in stems if stems.count(s) > 1)
        raise DiffeelError(f"two inputs share the name {duplicate!r}; their score maps would collide")
    return inputs


def logits_map_targets(out_dir: Path, stem: str, batch: int) -> list[Path]:
    """One map per image: ``{stem}.npy`` for a single image, ``{stem}_{i:04d}.npy`` for a batch."""
    if batch == 1:
        return [out_dir / f"{stem}.npy"]
    return [out_dir / f"{stem}_{index:04d}.npy" for index in range(batch)]


def _read_logits(path: Path, key: str | None) -> np.ndarray:
    logits = load_array(path, key=key)
    if logits.ndim not in (3, 4) or logits.dtype.kind != "f":
        raise DiffeelError(f"{path} holds a {logits.dtype} array of shape {logits.shape}; expected float logits "
                           "(C, H, W) or (B, C, H, W)")
    if logits.ndim == 3:
        logits = logits[None]
    if min(logits.shape) == 0 or logits.shape[1] < 2:
        raise DiffeelError(f"{path} holds logits of shape {logits.shape}; a score needs at least 2 classes and a non-empty image")
    return logits


def score_logits_files(inputs: list[Path], out_dir, score: str, *, alpha: float = 1.0, smooth: str = "none",
                       dtype: str = "float32", key: str | None = None, overwrite: bool = False, progress: bool = True) -> dict:
    """Write ``score`` of every logits file in ``inputs`` (:func:`find_logits_files`) to ``out_dir``,
    one map per image (:func:`logits_map_targets`), atomically; maps already there are kept unless
    ``overwrite``. ``smooth="rpl"``: RPL's Gaussian blur. Returns the counts written and kept."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    written = kept = 0
    claimed: set[Path] = set()
    for path in tqdm(inputs, desc=f"{score} scores", unit="file", disable=not progress):
        single = out_dir / f"{path.stem}.npy"
        if single.exists() and not overwrite:
            kept += 1
            claimed.add(single)
            continue
        logits = _read_logits(path, key)
        targets = logits_map_targets(out_dir, path.stem, logits.shape[0])
        if claimed & set(targets):
            raise DiffeelError(f"{path} would write {sorted(claimed & set(targets))[0].name}, which another input writes too")
        claimed.update(targets)
        if all(t.exists() for t in targets) and not overwrite:
            kept += len(targets)
            continue
        score_maps = compute_score(score, logits, alpha=alpha, dim=1)
        if smooth == "rpl":
            score_maps = gaussian_smooth(score_maps)
        if not np.isfinite(score_maps).all():
            raise DiffeelError(f"{path} gives non-finite {score} scores; the logits contain NaN or inf")
        for target, score_map in zip(targets, score_maps):
            save_array_atomic(target, score_map.astype(dtype))
        written += len(targets)
    return {"written": written, "kept": kept}

