"""Tiny generative VLM checkpoints with random weights, saved as transformers saves real ones (model,
processor, chat template): LLaVA, Qwen2-VL, Qwen2.5-VL, Idefics3 (SmolVLM's architecture) and Gemma 3.

The tokenizer is byte-level with no merges, so any question and answer is representable and decodes
exactly; every family gets a ChatML-style template with its own image placeholder. Qwen's processor is
saved as its parts (as on the hub: no video processor), which exercises fedvl's loader without
torchvision.
"""

from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

def byte_tokenizer(specials):
    # byte-level BPE with no merges: every string is representable, decoding is exact
    vocab = {c: i for i, c in enumerate(sorted(set(pre_tokenizers.ByteLevel.alphabet())))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return tok

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
          "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
          "{% if c['type'] == 'image' %}IMG{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

SPECIALS = ["<pad>", "<|im_start|>", "<|im_end|>", "<image>", "<|vision_start|>", "<|vision_end|>",
            "<|image_pad|>", "<|video_pad|>", "<fake_token_around_image>", "<global-img>",
            "<end_of_utterance>", "<start_of_image>", "<image_soft_token>", "<end_of_image>", "<bos>"]


def chat_template(image: str) -> str:
    return CHATML.replace("IMG", image)


def fast_tokenizer(template, **extra):
    from transformers import PreTrainedTokenizerFast
    tok = PreTrainedTokenizerFast(tokenizer_object=byte_tokenizer(SPECIALS), pad_token="<pad>",
                                  eos_token="<|im_end|>", bos_token="<bos>", extra_special_tokens=extra)
    tok.chat_template = template
    return tok


def _text(vocab, **kw):
    return dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512, **kw)


def build(family: str, out: Path, seed: int = 0) -> Path:
    import torch
    import transformers as tf
    from transformers.utils import logging

    logging.disable_progress_bar()  # "Writing model shards" in every test's output
    torch.manual_seed(seed)
    out = Path(out)
    if family == "llava":
        tok = fast_tokenizer(chat_template("<image>"), image_token="<image>")
        cfg = tf.LlavaConfig(vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                                                num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8),
                             text_config=dict(model_type="llama", **_text(len(tok))),
                             image_token_index=tok.convert_tokens_to_ids("<image>"), image_seq_length=16)
        ip = tf.CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        proc = tf.LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                                 num_additional_image_tokens=1, chat_template=tok.chat_template)
    elif family in ("qwen2_vl", "qwen2_5_vl"):
        tok = fast_tokenizer(chat_template("<|vision_start|><|image_pad|><|vision_end|>"),
                             image_token="<|image_pad|>", video_token="<|video_pad|>")
        ids = {k: tok.convert_tokens_to_ids(v) for k, v in dict(image_token_id="<|image_pad|>", video_token_id="<|video_pad|>",
               vision_start_token_id="<|vision_start|>", vision_end_token_id="<|vision_end|>").items()}
        rope = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}  # sums to head_dim / 2
        text = _text(len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, rope_parameters=rope)
        if family == "qwen2_vl":
            vision = dict(depth=2, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=8,
                          spatial_merge_size=2, temporal_patch_size=2, in_chans=3)
            cfg = tf.Qwen2VLConfig(text_config=text, vision_config=vision, **ids)
        else:
            vision = dict(depth=2, hidden_size=32, out_hidden_size=32, num_heads=2, intermediate_size=64, patch_size=8,
                          spatial_merge_size=2, temporal_patch_size=2, in_channels=3, window_size=16, fullatt_block_indexes=[1])
            cfg = tf.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
        ip = tf.Qwen2VLImageProcessorPil(patch_size=8, merge_size=2, temporal_patch_size=2,
                                         min_pixels=32 * 32, max_pixels=32 * 32)
        proc = None  # saved as its parts below
    elif family == "idefics3":
        tok = fast_tokenizer(chat_template("<image>"), image_token="<image>", end_of_utterance_token="<end_of_utterance>",
                             fake_image_token="<fake_token_around_image>", global_image_token="<global-img>")
        cfg = tf.Idefics3Config(vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                   num_attention_heads=2, image_size=32, patch_size=8),
                                text_config=dict(model_type="llama", **_text(len(tok))), scale_factor=2,
                                image_token_id=tok.convert_tokens_to_ids("<image>"))
        ip = tf.Idefics3ImageProcessorPil(do_image_splitting=False, size={"longest_edge": 32},
                                          max_image_size={"longest_edge": 32})
        proc = tf.Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=4, chat_template=tok.chat_template)
    elif family == "gemma3":
        tok = fast_tokenizer(chat_template("<start_of_image>"), image_token="<image_soft_token>",
                             boi_token="<start_of_image>", eoi_token="<end_of_image>")
        ids = {k: tok.convert_tokens_to_ids(v) for k, v in dict(image_token_index="<image_soft_token>",
               boi_token_index="<start_of_image>", eoi_token_index="<end_of_image>").items()}
        cfg = tf.Gemma3Config(text_config=dict(model_type="gemma3_text", head_dim=16, sliding_window=64, **_text(len(tok))),
                              vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                                                 num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8),
                              mm_tokens_per_image=4, **ids)
        ip = tf.Gemma3ImageProcessorPil(size={"height": 32, "width": 32})
        proc = tf.Gemma3Processor(image_processor=ip, tokenizer=tok, image_seq_length=4, chat_template=tok.chat_template)
    else:
        raise ValueError(family)
    model = tf.AutoModelForImageTextToText.from_config(cfg)
    model.save_pretrained(out)
    if family.startswith("qwen"):  # as on the hub: image processor, tokenizer and template, no video processor saved
        ip.save_pretrained(out)
        tok.save_pretrained(out)
        (out / "chat_template.jinja").write_text(tok.chat_template)
    else:
        proc.save_pretrained(out)
    return out


FAMILIES = ("llava", "qwen2_vl", "qwen2_5_vl", "idefics3", "gemma3")
