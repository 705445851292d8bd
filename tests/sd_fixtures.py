"""A tiny random Stable Diffusion pipeline in diffusers' folder layout, built offline by the tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def byte_symbols() -> list[str]:
    """The 256 byte symbols of byte-level BPE (printable bytes as themselves, the rest shifted past 255)."""
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(256 - len(printable))]


def tiny_stable_diffusion(folder: Path) -> Path:
    """UNet (4, 8) channels, a (4, 8) VAE, a 2-layer CLIP text encoder of width 32, DDIM; saved to ``folder``.

    The tokenizer is written as vocab.json + merges.txt + tokenizer_config.json and loaded with
    ``from_pretrained`` (transformers 5 ignores ``CLIPTokenizer(vocab_file=...)``).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(4, 8), layers_per_block=1, norm_num_groups=2, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, attention_head_dim=2)
    vae = AutoencoderKL(block_out_channels=(4, 8), norm_num_groups=2, in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    tokenizer_source = folder / "tokenizer-source"
    tokenizer_source.mkdir(parents=True, exist_ok=True)
    symbols = byte_symbols()
    vocabulary = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"])}
    (tokenizer_source / "vocab.json").write_text(json.dumps(vocabulary))
    (tokenizer_source / "merges.txt").write_text("#version: 0.2\n")
    (tokenizer_source / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77, "tokenizer_class": "CLIPTokenizer"}))
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_source))
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=len(vocabulary),
        max_position_embeddings=77, bos_token_id=vocabulary["<|startoftext|>"], eos_token_id=vocabulary["<|endoftext|>"],
        pad_token_id=vocabulary["<|endoftext|>"], projection_dim=32))
    pipeline = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=DDIMScheduler(clip_sample=False, steps_offset=1), safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipeline.save_pretrained(str(folder / "sd"))
    return folder / "sd"
