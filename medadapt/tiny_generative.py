"""Tiny generative (image-text-to-text) VLMs built from config, for tests, the demo and benchmarks.

Each builder returns ``(model, processor)``: a 2-layer model with hidden size 32 whose weights are
randomly initialised from a seed, and the model's *real* processor class (``LlavaProcessor``,
``Gemma3Processor``, ``PaliGemmaProcessor``, ``Idefics3Processor``) wired with a byte-level
tokenizer that carries the model's image special tokens and a tiny image processor (32x32 images,
4 to 16 image tokens). Nothing is downloaded. They are *not* medical models; they exist so that
every generative code path runs in milliseconds without network access, and so that the quirks
of each family (Gemma 3's ``token_type_ids``, PaliGemma's processor-made ``labels`` and added
tokens, Idefics3's nested text model) are present exactly as in the real checkpoints.

The text ``vocab_size`` is set from ``len(processor.tokenizer)`` *after* the processor has added
its own tokens (PaliGemma's processor adds 1152 location/segmentation tokens), and the image
token ids in the config are read from that tokenizer.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

__all__ = [
    "TINY_GENERATIVE_BUILDERS",
    "TINY_GENERATIVE_NAMES",
    "generative_byte_tokenizer",
    "tiny_generative",
    "tiny_gemma3",
    "tiny_idefics3",
    "tiny_llava",
    "tiny_paligemma",
]

HIDDEN = 32
IMAGE_SIZE = 32
PATCH_SIZE = 8
MAX_LENGTH = 512

# A short LLaVA-1.5 style chat: "USER: <image>\n{text} ASSISTANT: {answer}<eos>".
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'USER: ' }}{% elif message['role'] == 'assistant' %}{{ 'ASSISTANT: ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<image>\n' }}{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% else %}{{ ' ' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# A short Gemma 3 chat, as in the real template: it starts with bos (the tokenizer adds another
# one unless called with add_special_tokens=False, exactly like google/gemma-3 checkpoints).
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<start_of_image>' }}{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

# A short SmolVLM / Idefics3 chat: "User:<image>{text}<end_of_utterance>\nAssistant:".
IDEFICS3_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}{{ ':' }}"
    "{% if message['content'] is string %}{{ ' ' + message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<image>' }}{% elif item['type'] == 'text' %}{{ ' ' + item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<end_of_utterance>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def generative_byte_tokenizer(
    named_tokens: dict[str, str] | None = None,
    extra_tokens: tuple[str, ...] = (),
    add_bos_token: bool = True,
    chat_template: str | None = None,
    max_length: int = MAX_LENGTH,
) -> Any:
    """An offline byte-level fast tokenizer for generative models.

    Ids 0/1/2 are ``<pad>``/``<eos>``/``<bos>`` (Gemma's layout), then the 256 byte symbols, then
    the special tokens: ``named_tokens`` (``{"image_token": "<image>"}`` becomes the attributes
    ``tokenizer.image_token`` / ``tokenizer.image_token_id``) and unnamed ``extra_tokens``. Unlike
    :func:`medadapt.tiny.byte_level_tokenizer` it keeps case (decode inverts encode) and appends no
    eos to a prompt; it prepends bos when ``add_bos_token``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import AddedToken, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    named = dict(named_tokens or {})
    specials = list(dict.fromkeys([*named.values(), *extra_tokens]))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        add_bos_token=add_bos_token,
        add_eos_token=False,
        model_max_length=max_length,
        extra_special_tokens=named or None,
        chat_template=chat_template,
    )


def _text_ids(tokenizer: Any) -> dict[str, int]:
    return dict(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def _tower(**specific: Any) -> dict[str, Any]:
    """Config of a 2-layer, 2-head transformer of width ``HIDDEN`` plus the ``specific`` keys."""
    return {"hidden_size": HIDDEN, "intermediate_size": HIDDEN * 2, "num_hidden_layers": 2, "num_attention_heads": 2, **specific}


def _small_text(**overrides: Any) -> dict[str, Any]:
    return _tower(
        **{"num_key_value_heads": 1, "head_dim": HIDDEN // 2, "max_position_embeddings": MAX_LENGTH, **overrides}
    )


def _small_vision(**overrides: Any) -> dict[str, Any]:
    return _tower(**{"image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE, "num_channels": 3, **overrides})


def _seeded(seed: int, build: Callable[[], Any]) -> Any:
    """Run ``build`` under ``torch.manual_seed(seed)`` and restore the global RNG afterwards."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return build()
    finally:
        torch.random.set_rng_state(state)


#: The output head's weights are scaled up by this factor: with hidden size 32 and the usual 0.02
#: init, a random head gives near-uniform next-token distributions (loss ~ln(vocab) whatever the
#: adapter learns, and longer answers always lose by ~5 nats a token), so adapters could not learn.
LOGIT_SCALE = 20.0


def _finish(model: Any, tokenizer: Any, name: str) -> Any:
    model.eval()
    head = model.get_output_embeddings()
    if head is not model.get_input_embeddings():
        with torch.no_grad():
            head.weight.mul_(LOGIT_SCALE)
    model.config._name_or_path = f"medadapt/{name}"
    gen = model.generation_config
    gen.pad_token_id = tokenizer.pad_token_id
    gen.bos_token_id = tokenizer.bos_token_id
    gen.eos_token_id = tokenizer.eos_token_id
    return model


def tiny_llava(seed: int = 0, vision_layers: int = 2, vision_width: int = HIDDEN) -> tuple[Any, Any]:
    """A tiny ``LlavaForConditionalGeneration`` (CLIP vision tower + Llama) and its ``LlavaProcessor``.

    A 32x32 image gives 16 patch tokens (the CLS token is dropped: ``vision_feature_select_strategy
    ="default"``), so ``<image>`` expands to 16 image tokens. ``vision_layers`` / ``vision_width``
    make the image tower costlier (as in real bases, where it costs about as much as the language
    model per sample) without changing the image tokens' count or width.
    """
    from transformers import (
        CLIPImageProcessorPil,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = generative_byte_tokenizer({"image_token": "<image>"}, chat_template=LLAVA_CHAT_TEMPLATE)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    tok = processor.tokenizer
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", **_small_vision(
            projection_dim=HIDDEN, num_hidden_layers=vision_layers, hidden_size=vision_width, intermediate_size=vision_width * 2,
        )),
        text_config=dict(model_type="llama", **_small_text(), **_text_ids(tok)),
        image_token_index=tok.image_token_id,
        image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    model = _seeded(seed, lambda: LlavaForConditionalGeneration(config))
    return _finish(model, tok, "tiny-llava"), processor


def tiny_gemma3(seed: int = 0) -> tuple[Any, Any]:
    """A tiny ``Gemma3ForConditionalGeneration`` (SigLIP vision + Gemma 3 text) and its ``Gemma3Processor``.

    ``<start_of_image>`` in the text expands to ``<start_of_image>`` + 4 ``<image_soft_token>`` +
    ``<end_of_image>``; the processor returns ``token_type_ids`` (1 on image tokens), which the model
    needs to give image tokens bidirectional attention.
    """
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
    )

    named = {"boi_token": "<start_of_image>", "image_token": "<image_soft_token>", "eoi_token": "<end_of_image>"}
    tokenizer = generative_byte_tokenizer(
        named, extra_tokens=("<start_of_turn>", "<end_of_turn>"), chat_template=GEMMA3_CHAT_TEMPLATE
    )
    mm_tokens = 4  # 4x4 patches average-pooled to 2x2
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
        tokenizer=tokenizer,
        chat_template=GEMMA3_CHAT_TEMPLATE,
        image_seq_length=mm_tokens,
    )
    tok = processor.tokenizer
    config = Gemma3Config(
        vision_config=dict(model_type="siglip_vision_model", **_small_vision(vision_use_head=False)),
        text_config=dict(
            model_type="gemma3_text",
            **_small_text(query_pre_attn_scalar=HIDDEN // 2, sliding_window=64),
            **_text_ids(tok),
        ),
        mm_tokens_per_image=mm_tokens,
        boi_token_index=tok.boi_token_id,
        eoi_token_index=tok.eoi_token_id,
        image_token_index=tok.image_token_id,
    )

    def build() -> Any:
        model = Gemma3ForConditionalGeneration(config)
        # Gemma 3 initialises the image projection to zeros, so a fresh model would ignore every
        # image (and a frozen one would stay blind under a language-model-only LoRA): give it
        # random weights, whose outputs have the scale of the (sqrt(hidden)-scaled) text embeddings.
        with torch.no_grad():
            model.model.multi_modal_projector.mm_input_projection_weight.normal_(std=config.initializer_range)
        return model

    model = _seeded(seed, build)
    return _finish(model, tok, "tiny-gemma3"), processor


def tiny_paligemma(seed: int = 0) -> tuple[Any, Any]:
    """A tiny ``PaliGemmaForConditionalGeneration`` (SigLIP + Gemma) and its ``PaliGemmaProcessor``.

    The processor adds 1152 ``<locXXXX>``/``<segXXX>`` tokens to the tokenizer when it is built, so
    the text vocabulary is sized after it. Given ``suffix=``, the processor returns ``labels``.
    There is no chat template: PaliGemma takes a task prefix such as ``"answer en {question}"``.
    """
    from transformers import (
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessorPil,
    )

    tokenizer = generative_byte_tokenizer({"image_token": "<image>"})
    image_processor = SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    image_processor.image_seq_length = (IMAGE_SIZE // PATCH_SIZE) ** 2
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    tok = processor.tokenizer
    config = PaliGemmaConfig(
        vision_config=dict(model_type="siglip_vision_model", **_small_vision(vision_use_head=False)),
        text_config=dict(model_type="gemma", **_small_text(), **_text_ids(tok)),
        image_token_index=tok.image_token_id,
        vocab_size=len(tok),
        projection_dim=HIDDEN,
        hidden_size=HIDDEN,
    )
    model = _seeded(seed, lambda: PaliGemmaForConditionalGeneration(config))
    return _finish(model, tok, "tiny-paligemma"), processor


def tiny_idefics3(seed: int = 0) -> tuple[Any, Any]:
    """A tiny ``Idefics3ForConditionalGeneration`` (SmolVLM layout) and its ``Idefics3Processor``.

    Images are not split (``do_image_splitting=False``); a 32x32 image gives 16 patches, pixel-
    shuffled by ``scale_factor=2`` into 4 image tokens, wrapped as ``<fake_token_around_image>
    <global-img><image>x4<fake_token_around_image>``. The language model is at
    ``model.model.text_model``.
    """
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
    )

    tokenizer = generative_byte_tokenizer(
        {"image_token": "<image>"},
        extra_tokens=("<fake_token_around_image>", "<global-img>", "<end_of_utterance>"),
        chat_template=IDEFICS3_CHAT_TEMPLATE,
    )
    scale_factor = 2
    image_seq_len = (IMAGE_SIZE // PATCH_SIZE) ** 2 // scale_factor**2
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False,
        size={"longest_edge": IMAGE_SIZE},
        max_image_size={"longest_edge": IMAGE_SIZE},
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=image_seq_len,
        chat_template=IDEFICS3_CHAT_TEMPLATE,
    )
    tok = processor.tokenizer
    config = Idefics3Config(
        vision_config=dict(model_type="idefics3_vision", **_small_vision()),
        text_config=dict(model_type="llama", **_small_text(), **_text_ids(tok)),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=scale_factor,
    )
    model = _seeded(seed, lambda: Idefics3ForConditionalGeneration(config))
    return _finish(model, tok, "tiny-idefics3"), processor


#: Names accepted by :func:`tiny_generative`, with their builders.
TINY_GENERATIVE_BUILDERS: dict[str, Callable[[int], tuple[Any, Any]]] = {
    "tiny-llava": tiny_llava,
    "tiny-gemma3": tiny_gemma3,
    "tiny-paligemma": tiny_paligemma,
    "tiny-idefics3": tiny_idefics3,
}
TINY_GENERATIVE_NAMES = tuple(TINY_GENERATIVE_BUILDERS)


def tiny_generative(name: str, seed: int = 0) -> tuple[Any, Any]:
    """Build the tiny generative VLM ``name`` (one of :data:`TINY_GENERATIVE_NAMES`) from ``seed``.

    Returns ``(model, processor)``; the same name and seed always give the same weights.
    """
    from .errors import UnsupportedBackboneError

    try:
        build = TINY_GENERATIVE_BUILDERS[name]
    except (KeyError, TypeError):
        raise UnsupportedBackboneError(
            f"unknown tiny generative model {name!r}; available: {list(TINY_GENERATIVE_NAMES)}"
        ) from None
    return build(seed)
