"""Anomaly synthesis for training (paper section IV-A): diffusion objects, cut-outs, harmonized copy-paste with Eq. 1.

    >>> bank = ObjectBank.from_folder("world/train/objects")
    >>> synth = CopyPasteSynthesizer(bank, objects_per_image=2)
    >>> image2, labels2 = synth(image, train_ids, np.random.default_rng(0))

Pasted pixels get label ``ANOMALY_TRAIN_ID`` (254). The pipeline is object source → mask extractor
→ placement → blender → :func:`paste` (Eq. 1); see :mod:`diffeel.synth.synthesizer`. The
generator (:mod:`~diffeel.synth.generate`, Stable Diffusion), the salient object extractor
(:mod:`~diffeel.synth.extract`, U^2-Net or GrabCut) and the bank builder
(:mod:`~diffeel.synth.bank_builder`) make object banks; :mod:`~diffeel.synth.coco` draws COCO objects as RPL
does; :mod:`~diffeel.synth.harmonize` holds
DoveNet and Poisson blending (import it from there: it needs torch, this package does not);
:mod:`~diffeel.synth.pairs` writes training pairs.
"""

from .bank import BankObject, ObjectBank, ObjectSource, read_cutout, tight_crop
from .compose import paste
from .illumination import match_illumination, ring_mask
from .placement import DRIVABLE, OCCLUDERS, Placement, find_placement
from .rpl_mix import RPL_SCALES, RPLMixSynthesizer
from .synthesizer import (
    Blender,
    CopyPasteSynthesizer,
    IlluminationBlender,
    MaskExtractor,
    PastedObject,
    SynthesisResult,
    Synthesizer,
    camera_for,
    keep_colours,
    resize_object,
)

__all__ = [
    "DRIVABLE",
    "OCCLUDERS",
    "BankObject",
    "Blender",
    "CopyPasteSynthesizer",
    "IlluminationBlender",
    "MaskExtractor",
    "ObjectBank",
    "ObjectSource",
    "PastedObject",
    "RPLMixSynthesizer",
    "RPL_SCALES",
    "Placement",
    "SynthesisResult",
    "Synthesizer",
    "camera_for",
    "find_placement",
    "keep_colours",
    "match_illumination",
    "paste",
    "read_cutout",
    "resize_object",
    "ring_mask",
    "tight_crop",
]
