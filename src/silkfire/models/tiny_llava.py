"""Build a tiny LLaVA-architecture VLM (CLIP vision tower + projector + Llama) and its LlavaProcessor.

Everything is created locally from config, so the pipeline runs offline; the saved folder has the exact layout
of a hub LLaVA checkpoint (config.json, model.safetensors, tokenizer, processor) and reloads through
``AutoModelForImageTextToText`` / ``AutoProcessor`` like llava-hf/llava-1.5-7b-hf does.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from silkfire.models.config import ModelConfig
from silkfire.models.tokenizer import CHAT_TEMPLATE, train_tokenizer


def build_processor(model_cfg: ModelConfig, tokenizer: PreTrainedTokenizerFast) -> LlavaProcessor:
    """LlavaProcessor whose "<image>" expands to exactly (image_size/patch_size)^2 tokens."""
    size = model_cfg.vision.image_size
    # No torchvision here: the PIL backend of the CLIP processor (saved as CLIPImageProcessor).
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )
    # CLIP adds a CLS token (+1) that the "default" feature strategy drops again (-1): 9 tokens for 48/16.
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=model_cfg.vision.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


def build_model(model_cfg: ModelConfig, tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlavaForConditionalGeneration:
    """A randomly initialised LLaVA sized by ``model_cfg`` (deterministic for a given seed)."""
    vision, text = model_cfg.vision, model_cfg.text
    vision_config = CLIPVisionConfig(
        hidden_size=vision.hidden_size,
        intermediate_size=vision.intermediate_size,
        num_hidden_layers=vision.num_layers,
        num_attention_heads=vision.num_heads,
        image_size=vision.image_size,
        patch_size=vision.patch_size,
        projection_dim=vision.hidden_size,
    )
    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=text.hidden_size,
        intermediate_size=text.intermediate_size,
        num_hidden_layers=text.num_layers,
        num_attention_heads=text.num_heads,
        num_key_value_heads=text.num_kv_heads,
        max_position_embeddings=text.max_position_embeddings,
        tie_word_embeddings=text.tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.image_token_id,
        image_seq_length=vision.num_image_tokens,
        vision_feature_select_strategy="default",
        vision_feature_layer=vision.feature_layer,
        tie_word_embeddings=text.tie_word_embeddings,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    generation = model.generation_config
    generation.pad_token_id = tokenizer.pad_token_id
    generation.bos_token_id = tokenizer.bos_token_id
    generation.eos_token_id = tokenizer.eos_token_id
    generation.do_sample = False
    return model.to(dtype=getattr(torch, model_cfg.dtype))


def build_tiny_llava(
    model_cfg: ModelConfig, texts: Iterable[str], out_dir: str | Path, seed: int = 0
) -> Path:
    """Train the tokenizer on ``texts``, build model + processor, save both (safetensors) to ``out_dir``."""
    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(texts, model_cfg.vocab_size)
    processor = build_processor(model_cfg, tokenizer)
    model = build_model(model_cfg, tokenizer, seed=seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    return out_dir
