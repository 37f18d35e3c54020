"""Smallest useful worlds and models for tests (here, not under tests/, so every module's tests can share them).

A test model is a real tiny LLaVA (same code path as the pipeline's), just narrower: it builds in well under a
second and trains at hundreds of samples per second on 2 cores.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Narrow but complete: 48x48 images, patch 16 -> 9 image tokens (one per grid cell), like the default model.
TEST_MODEL: dict[str, Any] = {
    "source": "build",
    "dtype": "float32",
    "vocab_size": 400,
    "vision": {"image_size": 48, "patch_size": 16, "hidden_size": 32, "intermediate_size": 64,
               "num_layers": 1, "num_heads": 2},
    "text": {"hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 2, "num_kv_heads": 2,
             "max_position_embeddings": 256},
}


def make_test_world(out_dir: Path, *, train_scenes: int = 6, val_scenes: int = 2, test_scenes: int = 3,
                    seed: int = 0) -> Path:
    """A few-scene world in the data contract's format (written by the world module itself)."""
    from silkfire.world.config import WorldConfig
    from silkfire.world.build import generate_world

    config = WorldConfig(train_scenes=train_scenes, val_scenes=val_scenes, test_scenes=test_scenes)
    generate_world(config, Path(out_dir), seed=seed, progress=False)
    return Path(out_dir)


def make_test_model(out_dir: Path, *, seed: int = 0, **overrides: Any) -> Path:
    """Build and save a tiny test VLM (tokenizer trained on the default world's texts) into ``out_dir``."""
    from silkfire.models.config import ModelConfig
    from silkfire.models.tiny_llava import build_tiny_llava
    from silkfire.world.config import WorldConfig
    from silkfire.world.texts import world_texts

    model_cfg = ModelConfig.from_mapping({**TEST_MODEL, **overrides})
    return build_tiny_llava(model_cfg, world_texts(WorldConfig()), Path(out_dir), seed=seed)


# ---- tiny checkpoints of real architectures, in their hub layout -------------------------------------------------
# Random weights, a few hundred thousand parameters, but everything else as the hub checkpoints have it: the
# family's model class, its processor class with its image processor (at the family's resolution), a tokenizer of the
# family's kind (trained locally on the world's texts with `tokenizers`) and the family's chat template, verbatim.
# The pipeline cannot tell them from the real thing except by their size: `model.name_or_path=<folder>`.

# llava-hf/llava-1.5-7b-hf (chat_template.json): the assistant turn ends with a space and no </s>.
LLAVA_HF_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
# llava-hf/llama3-llava-next-8b-hf (chat_template.json): Llama-3 headers, every text block opens with a newline.
LLAMA3_LLAVA_NEXT_TEMPLATE = (
    "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'}}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>' }}{% endfor %}{# Render all text next #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ '\n' + content['text'] + '<|eot_id|>' }}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# Qwen/Qwen2-VL-7B-Instruct (chat_template.json): ChatML with a default system turn.
QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: "
    "{% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
REAL_FAMILIES = ("llava", "llava_next", "qwen2_vl")
# Text model of every real-architecture test checkpoint (vision sizes per family below).
_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
         "num_key_value_heads": 1, "max_position_embeddings": 4096}


def _corpus(texts: Any) -> list[str]:
    if texts is None:
        from silkfire.world.config import WorldConfig
        from silkfire.world.texts import world_texts

        texts = world_texts(WorldConfig())
    # the chat scaffolding of every template is part of every sequence: let its words merge too
    return ["USER: ASSISTANT: system user assistant You are a helpful assistant.", *texts]


def llama_tokenizer(texts: Any = None, vocab_size: int = 800) -> Any:
    """A Llama-1/2 style tokenizer (``LlamaTokenizer``: sentencepiece-like BPE on ``▁``-prefixed words, byte
    fallback, <unk>/<s>/</s> at ids 0-2, the 256 byte tokens next), plus llava-hf's ``<image>`` and ``<pad>``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaTokenizer

    core = Tokenizer(models.BPE(byte_fallback=True, fuse_unk=True, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    specials = ["<unk>", "<s>", "</s>", *(f"<0x{i:02X}>" for i in range(256))]
    core.train_from_iterator(_corpus(texts), trainer=trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                                        show_progress=False))
    model = json.loads(core.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tokenizer = LlamaTokenizer(vocab=model["vocab"], merges=merges, add_bos_token=True, legacy=False,
                               padding_side="left", model_max_length=4096)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    return tokenizer


def _byte_level_bpe(texts: Any, vocab_size: int, specials: list[str]) -> dict[str, Any]:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(_corpus(texts), trainer=trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return {"core": core, "model": json.loads(core.to_str())["model"]}


QWEN2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                  "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]


def qwen2_tokenizer(texts: Any = None, vocab_size: int = 800) -> Any:
    """A Qwen2 tokenizer (``Qwen2Tokenizer``: byte-level BPE, no BOS, eos <|im_end|>, pad <|endoftext|>) with
    Qwen2-VL's special tokens."""
    from transformers import Qwen2Tokenizer

    trained = _byte_level_bpe(texts, vocab_size, [])["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    tokenizer = Qwen2Tokenizer(vocab=trained["vocab"], merges=merges, unk_token=None, bos_token=None,
                               eos_token="<|im_end|>", pad_token="<|endoftext|>", errors="replace",
                               padding_side="left", model_max_length=4096)
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN2_SPECIALS})
    return tokenizer


LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def llama3_tokenizer(texts: Any = None, vocab_size: int = 800) -> Any:
    """A Llama-3 style tokenizer (byte-level BPE in ``PreTrainedTokenizerFast``, <|begin_of_text|> prepended,
    <|eot_id|> ends a turn) with llava-hf's ``<image>`` and ``<pad>``."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    core = _byte_level_bpe(texts, vocab_size, [*LLAMA3_SPECIALS, "<image>", "<pad>"])["core"]
    core.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", core.token_to_id("<|begin_of_text|>"))])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   pad_token="<pad>", extra_special_tokens={"image_token": "<image>"},
                                   padding_side="left", model_max_length=4096)


def _finish(model: Any, tokenizer: Any, eos: list[int], out_dir: Path, processor: Any) -> Path:
    generation = model.generation_config
    generation.pad_token_id = tokenizer.pad_token_id
    generation.bos_token_id = tokenizer.bos_token_id
    generation.eos_token_id = eos if len(eos) > 1 else eos[0]
    generation.do_sample = False
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    return out_dir


def make_llava_hf_checkpoint(out_dir: Path, *, seed: int = 0, texts: Any = None, image_size: int = 336) -> Path:
    """llava-hf/llava-1.5-7b-hf in miniature: CLIP ViT at 336 px / patch 14 (576 image tokens, CLS dropped,
    feature layer -2), 2-layer GELU projector, Llama decoder, Llama tokenizer, llava-hf's chat template."""
    import torch
    from transformers import (CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    tokenizer = llama_tokenizer(texts)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": image_size}, do_center_crop=True,
                                            crop_size={"height": image_size, "width": image_size},
                                            image_mean=CLIP_MEAN, image_std=CLIP_STD)
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=LLAVA_HF_TEMPLATE, image_token="<image>")
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=image_size, patch_size=14, projection_dim=32)
    text = LlamaConfig(vocab_size=len(tokenizer), **_TEXT, pad_token_id=tokenizer.pad_token_id,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       tie_word_embeddings=False)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids(
        "<image>"), image_seq_length=(image_size // 14) ** 2, vision_feature_select_strategy="default",
        vision_feature_layer=-2, projector_hidden_act="gelu", tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    return _finish(model, tokenizer, [tokenizer.eos_token_id], Path(out_dir), processor)


def make_llava_next_checkpoint(out_dir: Path, *, seed: int = 0, texts: Any = None, tile: int = 56) -> Path:
    """llava-hf/llama3-llava-next-8b-hf in miniature: anyres (a base view plus tiles chosen from
    ``image_grid_pinpoints`` by the image's size, unpadded, a newline embedding per row: the token count differs
    per image), Llama-3 tokenizer and template. The geometry is the hub's scaled from 336-px tiles to ``tile``."""
    import torch
    from transformers import (CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration,
                              LlavaNextImageProcessorPil, LlavaNextProcessor)

    tokenizer = llama3_tokenizer(texts)
    pinpoints = [[tile, 2 * tile], [2 * tile, tile], [2 * tile, 2 * tile], [3 * tile, tile], [tile, 3 * tile]]
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": tile},
                                                 crop_size={"height": tile, "width": tile},
                                                 image_grid_pinpoints=pinpoints, image_mean=CLIP_MEAN,
                                                 image_std=CLIP_STD)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=LLAMA3_LLAVA_NEXT_TEMPLATE, image_token="<image>")
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=tile, patch_size=14, projection_dim=32)
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    end = tokenizer.convert_tokens_to_ids("<|end_of_text|>")
    text = LlamaConfig(vocab_size=len(tokenizer), **_TEXT, pad_token_id=tokenizer.pad_token_id,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=[end, eot], tie_word_embeddings=False)
    config = LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=tokenizer.image_token_id,
                             image_grid_pinpoints=pinpoints, vision_feature_select_strategy="default",
                             vision_feature_layer=-2, image_seq_length=(tile // 14) ** 2, tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaNextForConditionalGeneration(config)
    return _finish(model, tokenizer, [eot, end], Path(out_dir), processor)


def make_qwen2_vl_checkpoint(out_dir: Path, *, seed: int = 0, texts: Any = None,
                             max_pixels: int = 28 * 28 * 64) -> Path:
    """Qwen/Qwen2-VL-7B-Instruct in miniature: native-resolution ViT (patch 14, 2x2 merge: an image of h x w
    pixels -> (h/28)(w/28) tokens, resized to multiples of 28 between min_pixels and ``max_pixels``), pixel_values
    as flattened patches with ``image_grid_thw``, M-RoPE, Qwen2 tokenizer, ChatML template. Saved without a video
    processor (it needs torchvision); AutoProcessor loads the folder wherever torchvision is installed."""
    import torch
    from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil,
                              Qwen2VLTextConfig, Qwen2VLVisionConfig)

    from silkfire.models.families import image_only_processor_class

    tokenizer = qwen2_tokenizer(texts)
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=max_pixels, patch_size=14,
                                               temporal_patch_size=2, merge_size=2, image_mean=CLIP_MEAN,
                                               image_std=CLIP_STD)
    processor = image_only_processor_class("Qwen2VLProcessor")(image_processor=image_processor, tokenizer=tokenizer,
                                                                chat_template=QWEN2_VL_TEMPLATE)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN2_SPECIALS}
    vision = Qwen2VLVisionConfig(depth=2, embed_dim=32, hidden_size=_TEXT["hidden_size"], num_heads=2, mlp_ratio=2,
                                 patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
    head_dim = _TEXT["hidden_size"] // _TEXT["num_attention_heads"]
    unit = head_dim // 16  # Qwen2-VL's mrope_section [16, 24, 24] of 64 rotary pairs, scaled to this head size
    text = Qwen2VLTextConfig(vocab_size=len(tokenizer), **_TEXT,
                             rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0,
                                              "mrope_section": [unit * 2, unit * 3, unit * 3]},
                             bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                             pad_token_id=ids["<|endoftext|>"])
    config = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                           video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                           vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2VLForConditionalGeneration(config)
    out = _finish(model, tokenizer, [ids["<|im_end|>"], ids["<|endoftext|>"]], Path(out_dir), processor)
    image_processor.save_pretrained(out)  # preprocessor_config.json, as the hub has it (the video processor's source)
    return out


def make_real_checkpoint(family: str, out_dir: Path, *, seed: int = 0, texts: Any = None) -> Path:
    """A tiny checkpoint of ``family`` (one of REAL_FAMILIES) in its hub layout."""
    builders = {"llava": make_llava_hf_checkpoint, "llava_next": make_llava_next_checkpoint,
                "qwen2_vl": make_qwen2_vl_checkpoint}
    if family not in builders:
        raise ValueError(f"no test checkpoint builder for {family!r}; families: {list(builders)}")
    return builders[family](Path(out_dir), seed=seed, texts=texts)
