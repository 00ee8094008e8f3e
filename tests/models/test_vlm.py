"""model.name=hf-vlm: generative VLMs of five families, rendered, trained on their answers and scored."""

import numpy as np
import pytest
import torch

from fedvl.data.vlm_encode import encode_generative
from fedvl.engine.generate import generate_answers, score_answers
from fedvl.engine.loops import forward_logits
from fedvl.models.params import param_group, set_trainable, trainable_names
from fedvl.models.vlm import build_vlm
from fedvl.schema import ModelConfig
from vlm_fixtures import FAMILIES

VOCAB = ["red", "blue", "two dogs", "yes"]


def _data(model, n_rep=2):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3] * n_rep)
    questions = ["what color is it?", "what is shown?", "how many?", "is it?"] * n_rep
    return encode_generative(questions, [[VOCAB[x]] for x in labels], np.array([0, 1, 2, 3] * n_rep),
                             lambda r: images[r], 4, labels, VOCAB, "vqa", model, model.processor, 24, None)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_renders_caches_and_trains_only_its_lora(family, vlm_checkpoint):
    cfg = ModelConfig(name="hf-vlm", checkpoint=str(vlm_checkpoint(family)), peft="lora",
                      lora_targets=["q_proj", "v_proj"])
    model = build_vlm(cfg, 0, ("shared",))
    data = _data(model)
    tok = model.processor.tokenizer
    # the targets are exactly the answer turn: the answer, then the template's end of turn
    first = data.batch(torch.tensor([2]))
    assert tok.decode(first["labels"]).startswith("two dogs<|im_end|>")
    assert not first["target_mask"][0, : int(data.prompt_len[2])].any()
    # only LoRA in the language model trains: no vision tower, projector or other weight
    names = trainable_names(model, "lora", ("shared",))
    assert names and all(param_group(n) == "lora.shared" and ".vision" not in n for n in names)
    assert {param_group(n) for n, _ in model.named_parameters()} >= {"vision", "connector", "backbone", "lora.shared"}
    # the cached vision side gives the logits the pixels give (fp16 cache: within 1e-3)
    model.eval()
    b = data.batch(torch.arange(4))
    cached = forward_logits(model, b)
    pixels = {k: v for k, v in b.items() if k not in ("image_tokens", "image_token_counts")}
    pixels["pixel.pixel_values"] = torch.cat([data.pixels[r]["pixel_values"] for r in range(4)])
    assert cached.shape == (len(b["labels"]), len(tok))
    assert torch.allclose(cached, forward_logits(model, pixels), atol=1e-3)
    # a few LoRA steps on the answers lower their loss
    set_trainable(model, names)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(forward_logits(model, b), b["labels"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05
    assert len(generate_answers(model, data, 3, 4)) == len(data)


def test_batches_pad_right_for_training_and_left_for_generation(vlm_checkpoint):
    model = build_vlm(ModelConfig(name="hf-vlm", checkpoint=str(vlm_checkpoint("llava"))), 0, ("shared",))
    data = _data(model, n_rep=1)
    lengths = [len(t) for t in data.ids]
    train = data.batch(torch.arange(4))
    assert train["input_ids"].shape[1] == max(lengths)
    assert train["attention_mask"].sum(1).tolist() == lengths  # right padding: ones first
    assert (train["attention_mask"][:, 0] == 1).all()
    gen = data.batch(torch.arange(4), prompt_only=True)
    assert gen["attention_mask"].sum(1).tolist() == data.prompt_len.tolist()
    assert (gen["attention_mask"][:, -1] == 1).all()  # left padding: every prompt ends at the last column
    for b in range(4):
        n = int(data.prompt_len[b])
        assert torch.equal(gen["input_ids"][b, -n:], data.ids[b][:n])
    assert torch.equal(train["labels"], train["input_ids"][train["target_mask"]])


def test_generated_answers_are_scored_as_vqa_scores_them():
    vocab = ["2 dogs", "red", "yes"]
    humans = [["2 dogs"] * 3 + ["dogs"] * 7, ["red"], ["yes"] * 10, ["blue"] * 2 + ["red"] * 8]
    # "Two dogs." normalises to "2 dogs"; "dogs" is outside the label space but 7 humans said it
    got = score_answers(["Two dogs.", "RED", "no", "red"], [0, 1, 2, 1], vocab, humans)
    assert got["acc"] == pytest.approx(3 / 4)  # 2 dogs, red, red
    assert got["exact"] == pytest.approx(2 / 4)  # majority answers: dogs, red, yes, red -> red twice
    # VQA score: 3 of 10 humans -> 0.9 (leave-one-out mean), 1 of 1 -> 1, 0 of 10 -> 0, 8 of 10 -> 1
    assert got["vqa_score"] == pytest.approx((0.9 + 1.0 + 0.0 + 1.0) / 4)
    assert got["bal_acc"] == pytest.approx((1.0 + 1.0 + 0.0) / 3)  # classes 0, 1 (both right), 2
    text_outside = score_answers(["dogs"], [0], vocab, [humans[0]])
    assert text_outside["acc"] == 0.0 and text_outside["exact"] == 1.0 and text_outside["vqa_score"] == 1.0


def test_decoder_adapters_keep_the_pretrained_names_and_start_as_identity(vlm_checkpoint):
    path = str(vlm_checkpoint("llava"))
    plain = build_vlm(ModelConfig(name="hf-vlm", checkpoint=path, peft="full"), 0, ("shared",))
    adapted = build_vlm(ModelConfig(name="hf-vlm", checkpoint=path, peft="adapter"), 0, ("shared", "local", "teacher"))
    base_names = {n for n, _ in plain.named_parameters()}
    new = {n for n, _ in adapted.named_parameters()} - base_names
    assert base_names <= {n for n, _ in adapted.named_parameters()}
    assert new and {param_group(n) for n in new} == {"adapter.shared", "adapter.local", "adapter.teacher"}
    data = _data(plain, n_rep=1)
    b = data.batch(torch.arange(4))
    plain.eval()
    adapted.eval()
    assert torch.allclose(forward_logits(plain, b), forward_logits(adapted, b), atol=1e-6)  # up starts at zero


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "gemma3"])
def test_ranking_scores_exactly_the_answer_turns_training_puts_the_loss_on(family, vlm_checkpoint):
    from fedvl.data.vlm_encode import answer_turns
    from fedvl.engine.generate import rank_answers

    model = build_vlm(ModelConfig(name="hf-vlm", checkpoint=str(vlm_checkpoint(family))), 0, ("shared",))
    model.eval()
    data = _data(model, n_rep=1)
    turns = answer_turns(model.processor, VOCAB)
    for row in range(4):  # the candidate of the true answer is the training sequence itself
        assert torch.equal(turns[int(data.labels[row])], data.ids[row][int(data.prompt_len[row]):])
    # the ranked answer has the highest summed log-likelihood, checked one candidate at a time
    picked = rank_answers(model, data)
    for row in range(4):
        scores = []
        for turn in turns:
            b = data.candidates(row, [turn])
            logp = torch.log_softmax(forward_logits(model, b), -1)
            scores.append(logp.gather(1, b["labels"][:, None]).sum().item())
        assert picked[row] == VOCAB[int(np.argmax(scores))]


def test_a_letter_answer_to_a_multiple_choice_question_is_read_as_its_option():
    from fedvl.engine.generate import options, parse_choice

    q = "What colour is the car? A. dark red (B) blue C) two dogs D: yes"
    assert options(q) == {"A": "dark red", "B": "blue", "C": "two dogs", "D": "yes"}
    assert [parse_choice(t, q) for t in ["B", "(C)", "A.", "D) yes", "blue", "Bob"]] == \
        ["blue", "two dogs", "dark red", "yes", "blue", "Bob"]
    assert options("Is it A. or not?") == {} and parse_choice("A", "what is it?") == "A"  # no options: as is
    got = score_answers(["C", "B"], [2, 0], ["red", "blue", "two dogs"], [["2 dogs"], ["red"]], [q, "which? A. red B. blue"])
    assert got["acc"] == pytest.approx(0.5) and got["exact"] == pytest.approx(0.5)  # C -> two dogs; B -> blue


def test_a_training_projector_is_not_cached_and_learns(vlm_checkpoint):
    model = build_vlm(ModelConfig(name="hf-vlm", checkpoint=str(vlm_checkpoint("idefics3")), train_connector=True,
                                  peft="lora"),
                      0, ("shared",))
    assert not model.cache_vision
    data = _data(model, n_rep=1)
    assert data.image_tokens is None  # the pixels are kept: the frozen tower runs in every step
    b = data.batch(torch.arange(4))
    assert "pixel.pixel_values" in b and "image_tokens" not in b
    names = trainable_names(model, "lora", ("shared",))
    assert {param_group(n) for n in names} == {"lora.shared", "connector"}
    set_trainable(model, names)
    loss = torch.nn.functional.cross_entropy(forward_logits(model, b), b["labels"])
    loss.backward()
    grads = {param_group(n): p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert "connector" in grads and "vision" not in grads
