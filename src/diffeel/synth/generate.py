"""The object generator of DiffEEL's synthesizer: Stable Diffusion draws "One {object} in the {background}".

Every object is planned before anything is drawn: object ``i`` of a bank with seed ``S`` takes
its object, background and diffusion seed from a generator seeded by ``(S, i)``, so a plan never
depends on how many objects are drawn, in which batch or on which shard, and any object can be
drawn again exactly from its record (prompt, seed, model fingerprint, settings).

The pipeline loads only from local files (``HF_HUB_OFFLINE`` is set before Hugging Face's hub
library is imported, and ``local_files_only``): a diffusers folder (``model_index.json``,
``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``), or one ``.safetensors`` /
``.ckpt`` file with ``config`` = such a folder's configuration (without it diffusers would try
the network). On CUDA it runs in float16 with attention slicing; on the CPU in float32.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import DiffeelError

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is first imported (later has no effect)
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # transformers narrates optional back-ends it does not find

PROMPT_TEMPLATE = "One {object} in the {background}"
DIFFUSERS_FOLDER_FILES = ("model_index.json", "unet/", "vae/", "text_encoder/", "tokenizer/", "scheduler/")


@dataclass(frozen=True)
class VocabularyEntry:
    object: str
    category: str
    height_range: tuple[float, float]


def _vocabulary_text(path, default_name: str) -> tuple[str, str]:
    if path is None:
        return resources.files("diffeel.synth").joinpath("vocabulary", default_name).read_text(encoding="utf-8"), f"diffeel's {default_name}"
    path = Path(path)
    if not path.is_file():
        raise DiffeelError(f"vocabulary file {path} does not exist")
    return path.read_text(encoding="utf-8"), str(path)


def read_objects(path=None) -> list[VocabularyEntry]:
    """The object vocabulary: CSV ``object,category,min_height_m,max_height_m`` (real-height priors
    for placement); diffeel's own list (animals, static and dynamic obstacles, unusual vehicles)
    when ``path`` is None."""
    text, where = _vocabulary_text(path, "objects.csv")
    rows = list(csv.DictReader(line for line in text.splitlines() if line.strip() and not line.startswith("#")))
    entries = []
    for line, row in enumerate(rows, start=2):
        try:
            low, high = float(row["min_height_m"]), float(row["max_height_m"])
            name, category = row["object"].strip(), (row.get("category") or "object").strip()
        except (KeyError, TypeError, ValueError, AttributeError):
            raise DiffeelError(f"{where} line {line}: expected object,category,min_height_m,max_height_m with heights in metres") from None
        if not name or not 0 < low <= high:
            raise DiffeelError(f"{where} line {line}: needs an object name and heights 0 < min <= max")
        entries.append(VocabularyEntry(name, category, (low, high)))
    if not entries:
        raise DiffeelError(f"{where} lists no objects")
    return entries


def read_backgrounds(path=None) -> list[str]:
    """One background per line (``#`` comments), completing the prompt template."""
    text, where = _vocabulary_text(path, "backgrounds.txt")
    backgrounds = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not backgrounds:
        raise DiffeelError(f"{where} lists no backgrounds")
    return backgrounds


@dataclass(frozen=True)
class ObjectPlan:
    index: int
    object: str
    category: str
    background: str
    seed: int
    height_range: tuple[float, float]

    @property
    def id(self) -> str:
        return f"{self.index:06d}"

    @property
    def prompt(self) -> str:
        return PROMPT_TEMPLATE.format(object=self.object, background=self.background)


def plan_objects(count: int, seed: int, objects: list[VocabularyEntry], backgrounds: list[str],
                 shard: tuple[int, int] = (0, 1)) -> list[ObjectPlan]:
    """The plans of objects ``0 … count-1`` that belong to ``shard`` = (I, K): those with index ≡ I
    (mod K). The union of the K shards is the unsharded plan."""
    part, parts = shard
    if not (isinstance(parts, int) and parts >= 1 and 0 <= part < parts):
        raise DiffeelError(f"shard {part}/{parts} is not of the form I/K with 0 <= I < K")
    plans = []
    for index in range(part, count, parts):
        rng = np.random.default_rng([seed, index])
        entry = objects[int(rng.integers(len(objects)))]
        background = backgrounds[int(rng.integers(len(backgrounds)))]
        plans.append(ObjectPlan(index, entry.object, entry.category, background, int(rng.integers(2**31 - 1)), entry.height_range))
    return plans


def model_fingerprint(path) -> str:
    """A short identity of a local model: SHA-256 over its configuration files, and the size and
    first MiB of each weight file (cheap on multi-GB weights, and changes when they change)."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with open(file, "rb") as stream:
            if file.suffix in (".json", ".txt", ".yaml", ".model"):
                digest.update(stream.read())
            else:
                digest.update(str(file.stat().st_size).encode())
                digest.update(stream.read(2**20))
    return digest.hexdigest()[:16]


def check_model_files(path, config=None) -> None:
    """Fail at once, saying which files go where, when the model is not on disk."""
    path = Path(path)
    expected = (f"a diffusers folder ({', '.join(DIFFUSERS_FOLDER_FILES)}), or a single .safetensors/.ckpt file "
                "with --config pointing to a diffusers configuration folder")
    if path.is_dir():
        missing = [name for name in DIFFUSERS_FOLDER_FILES if not (path / name.rstrip("/")).exists()]
        if missing:
            raise DiffeelError(f"Stable Diffusion folder {path} lacks {', '.join(missing)}; expected {expected}")
    elif path.is_file():
        if path.suffix not in (".safetensors", ".ckpt"):
            raise DiffeelError(f"{path} is not a Stable Diffusion model; expected {expected}")
        if config is None or not (Path(config) / "model_index.json").is_file():
            raise DiffeelError(f"a single-file model ({path.name}) needs --config, a local diffusers configuration folder with "
                               "model_index.json (diffusers would otherwise fetch it from the network)")
    else:
        raise DiffeelError(f"Stable Diffusion model {path} does not exist; expected {expected}")


def load_pipeline(path, *, config=None, device: str = "cpu"):
    """A ``StableDiffusionPipeline`` from local files only, without the safety checker; float16 and
    attention slicing on CUDA."""
    check_model_files(path, config)
    import torch

    try:
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging
    except ImportError as error:
        raise DiffeelError(f"the object generator needs the diffusers and transformers packages ({error})") from None
    for library in (diffusers_logging, transformers_logging):
        library.set_verbosity_error()
        library.disable_progress_bar()
    dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
    common = {"safety_checker": None, "requires_safety_checker": False, "dtype": dtype, "local_files_only": True}
    try:
        if Path(path).is_dir():
            pipeline = StableDiffusionPipeline.from_pretrained(str(path), **common)
        else:
            pipeline = StableDiffusionPipeline.from_single_file(str(path), config=str(config), **common)
    except Exception as error:  # diffusers raises many types for damaged or foreign model files
        raise DiffeelError(f"Stable Diffusion model {path} could not be loaded ({type(error).__name__}: "
                           f"{' '.join(str(error).split())[:200]})") from error
    pipeline = pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    if str(device).startswith("cuda"):
        pipeline.enable_attention_slicing()
    return pipeline


@dataclass(frozen=True)
class GenerationSettings:
    steps: int = 30
    size: int = 512
    guidance: float = 7.5

    def __post_init__(self):
        if self.size % 8 or self.size < 8:
            raise DiffeelError(f"the image size must be a positive multiple of 8 pixels, got {self.size}")


def generate_images(pipeline, plans: list[ObjectPlan], settings: GenerationSettings, device: str = "cpu") -> list[np.ndarray]:
    """One ``(size, size, 3)`` uint8 image per plan, in one batch; each latent comes from the
    plan's own seeded generator, so an object does not depend on its batch mates' seeds."""
    import torch

    generators = [torch.Generator(device=device).manual_seed(plan.seed) for plan in plans]
    with torch.inference_mode():
        result = pipeline(prompt=[plan.prompt for plan in plans], num_inference_steps=settings.steps, guidance_scale=settings.guidance,
                          height=settings.size, width=settings.size, generator=generators, output_type="np")
    images = np.asarray(result.images)
    if not np.isfinite(images).all():
        raise DiffeelError("the diffusion model produced NaN pixels (float16 overflow? try --device cpu or another model)")
    return [(np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8) for image in images]
