"""A small byte-level BPE tokenizer for the shapes world, with LLaVA-1.5's chat format.

The tiny VLM's vocabulary is trained on the world's own texts (questions + answers) so a few hundred tokens
cover everything. The chat template renders LLaVA-1.5's single-turn format

    USER: <image>\\n{question} ASSISTANT: {answer}</s>

and accepts message content either as a plain string or as a list of ``{"type": "image"}`` /
``{"type": "text", "text": ...}`` blocks (what processors and TRL produce). ``<s>`` is added by the
tokenizer's post-processor (``add_special_tokens=True``), not by the template, so the template text can be
fed to ``processor(text=...)`` without doubling it.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"
IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN, IMAGE_TOKEN]

# Images first (one "<image>\n" per image block), then the text; the assistant turn ends with </s>.
# A string content that already holds "<image>" is rendered as is (the processor's own convention).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for block in message['content'] if block['type'] == 'text' -%}{{ block['text'] }}{%- endfor -%}"
    "{%- endif -%}{{ ' ' }}"
    "{%- else -%}"
    "{%- if not loop.first and loop.previtem['role'] != 'system' -%}{{ ' ' }}{%- endif -%}"
    "{{ message['role'].upper() + ': ' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}"
    "{%- for block in message['content'] if block['type'] == 'image' -%}{{ '<image>\\n' }}{%- endfor -%}"
    "{%- for block in message['content'] if block['type'] == 'text' -%}"
    "{%- if not loop.first -%}{{ ' ' }}{%- endif -%}{{ block['text'] }}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{{ eos_token }}{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ ' ASSISTANT:' }}{%- endif -%}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` and wrap it with pad/bos/eos/unk, ``<image>`` and the chat template.

    ``vocab_size`` is an upper bound: a small corpus yields fewer merges. The 256 byte symbols are always
    present, so any text (also text never seen in training) can be encoded.
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size={vocab_size} is too small: byte-level BPE needs at least {256 + len(SPECIAL_TOKENS)}")
    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # The chat scaffolding is part of every sequence: make sure its words get merged too.
    scaffold = ["USER: ASSISTANT: Please answer yes or no. Yes No"]
    core.train_from_iterator(_chain(scaffold, texts), trainer=trainer)
    bos_id = core.token_to_id(BOS_TOKEN)
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B", special_tokens=[(BOS_TOKEN, bos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        chat_template=CHAT_TEMPLATE,
        padding_side="right",
        model_max_length=2048,
    )
    return tokenizer


def _chain(head: list[str], tail: Iterable[str]) -> Iterable[str]:
    yield from head
    yield from tail
