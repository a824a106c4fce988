"""Shared fixtures: real Qwen tokenizers rebuilt offline, tiny random Qwen2 folders with heads (one that writes
the separator often, for search and step scores), four demo questions."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def qwen_tokenizers(tmp_path_factory):
    """Dict flavour -> saved tokenizer folder, for qwen2.5, qwq and r1-distill."""
    from metastone.assets.qwen_tokenizer import FLAVOURS, build_qwen_tokenizer

    root = tmp_path_factory.mktemp("tokenizers")
    out = {}
    for flavour in FLAVOURS:
        build_qwen_tokenizer(flavour).save_pretrained(root / flavour)
        out[flavour] = root / flavour
    return out


@pytest.fixture(scope="session")
def qwq_tokenizer(qwen_tokenizers):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen_tokenizers["qwq"])


@pytest.fixture(scope="session")
def r1_tokenizer(qwen_tokenizers):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen_tokenizers["r1-distill"])


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, qwq_tokenizer):
    """A tiny QwQ-flavoured Qwen2 folder with a released-format ``score_module.pt`` beside it."""
    from metastone.assets.tiny import make_tiny_qwen2

    return make_tiny_qwen2(tmp_path_factory.mktemp("tiny_qwq"), qwq_tokenizer, head_format="released", seed=1)


@pytest.fixture(scope="session")
def tiny_r1_dir(tmp_path_factory, r1_tokenizer):
    """A tiny R1-distill-flavoured Qwen2 folder with our head format (safetensors + config)."""
    from metastone.assets.tiny import make_tiny_qwen2

    return make_tiny_qwen2(tmp_path_factory.mktemp("tiny_r1"), r1_tokenizer, head_format="ours", seed=2, num_layers=3)


@pytest.fixture(scope="session")
def demo4(tmp_path_factory):
    """The first four questions of the shipped demo task."""
    from metastone.eval.tasks import DATA_DIR

    path = tmp_path_factory.mktemp("demo") / "demo4.jsonl"
    path.write_text("".join((DATA_DIR / "demo" / "test.jsonl").read_text().splitlines(keepends=True)[:4]))
    return path


@pytest.fixture(scope="session")
def peaky_model(tmp_path_factory, qwq_tokenizer):
    """A tiny random Qwen2 that writes "." about a quarter of the time: its (untied) LM-head row for "."
    points along the mean final hidden state. Its head is saved with "." as the separator, like the demo
    model's, and no think tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    from metastone.assets.tiny import make_tiny_qwen2
    from metastone.eval.tasks import load_task
    from metastone.sprm import SPRMConfig, load_head, save_head

    root = tmp_path_factory.mktemp("peaky")
    src = make_tiny_qwen2(root / "src", qwq_tokenizer, head_format="ours", seed=3)
    task = load_task("demo")
    prompts = [qwq_tokenizer.encode(task.prompt(task[i]), add_special_tokens=False) for i in range(4)]
    (sep,) = qwq_tokenizer.encode(".", add_special_tokens=False)
    model = AutoModelForCausalLM.from_pretrained(src, tie_word_embeddings=False)
    with torch.no_grad():
        final = torch.cat([model(torch.tensor([p]), output_hidden_states=True).hidden_states[-1][0] for p in prompts])
        mean = final.mean(0)
        model.lm_head.weight.copy_(model.model.embed_tokens.weight)
        model.lm_head.weight[sep] = mean / mean.norm() ** 2 * 12.0
    out = root / "model"
    model.save_pretrained(out)
    qwq_tokenizer.save_pretrained(out)
    head, cfg = load_head(src)
    save_head(head, out, SPRMConfig(hidden_size=cfg.hidden_size, separators=(".",), think_tokens=None))
    return out, [sep]
