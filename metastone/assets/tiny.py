"""Tiny random Qwen2 models saved as real HF folders with an SPRM head beside them.

Used by the tests and benchmarks: the architecture, file layout, tokenizer and head format are
those of a released MetaStone-S1 folder, only the sizes are tiny and the weights random.
"""

from __future__ import annotations

from pathlib import Path

import torch

from metastone.sprm import SPRMConfig, SPRMHead, save_head


def make_tiny_qwen2(
    out_dir: str | Path,
    tokenizer,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    num_kv_heads: int = 1,
    intermediate_size: int = 128,
    seed: int = 0,
    head_format: str = "released",
    head_init_std: float | None = 8.0,
    max_position_embeddings: int = 4096,
    vocab_size: int | None = None,
) -> Path:
    """Write a random ``Qwen2ForCausalLM`` + tokenizer + SPRM head to ``out_dir``.

    ``head_format``: ``released`` (``score_module.pt`` only), ``ours`` (safetensors + config), ``both``
    or ``none``. ``head_init_std`` widens the head's init so its scores spread over (0, 1).
    ``vocab_size``: the embedding's rows (default: the tokenizer's length rounded up to 64; Qwen2's real
    checkpoints have 152,064).
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if head_format not in ("released", "ours", "both", "none"):
        raise ValueError(f"head_format must be released|ours|both|none, got {head_format!r}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    vocab = vocab_size or (len(tokenizer) + 63) // 64 * 64
    if vocab < len(tokenizer):
        raise ValueError(f"vocab_size {vocab} is smaller than the tokenizer ({len(tokenizer)} entries).")
    config = Qwen2Config(
        vocab_size=vocab, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if head_format != "none":
        head = SPRMHead(hidden_size)
        if head_init_std is not None:
            with torch.no_grad():
                for layer in (head[0], head[3]):
                    layer.weight.normal_(0.0, head_init_std / layer.in_features**0.5)
                    layer.bias.normal_(0.0, 0.1)
        cfg = SPRMConfig(hidden_size=hidden_size)
        if head_format == "released":
            torch.save({k: v.clone() for k, v in head.state_dict().items()}, out / "score_module.pt")
        else:
            save_head(head, out, cfg, released_format=head_format == "both")
    return out


REASONER_QUESTION = "What is {a}+{b}?"
REASONER_RESPONSE = "Add {a} and {b}.\n\nThe sum is {x}.\n\n</think>\nThe answer is \\boxed{{{x}}}."


def reasoner_problems(n: int, seed: int = 0) -> list[dict]:
    """``n`` one-digit sums as (question, answer) records (``metastone.data.prepare`` input), the tiny reasoner's task."""
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        rows.append({"question": REASONER_QUESTION.format(a=a, b=b), "answer": str(a + b)})
    return rows


def make_tiny_reasoner(
    out_dir: str | Path,
    tokenizer,
    *,
    steps: int = 300,
    batch_size: int = 32,
    correct_frac: float = 0.5,
    lr: float = 3e-3,
    seed: int = 0,
    **model_kwargs,
) -> Path:
    """A tiny Qwen2 taught the shape of a reasoning trace, so RL on it sees valid, graded rollouts.

    A random model never closes ``</think>`` and never writes a box, so every training label would be
    invalid. This one is fitted on chat-formatted traces
    ``Add a and b.\\n\\nThe sum is x.\\n\\n</think>\\nThe answer is \\boxed{x}.<|im_end|>`` where ``x`` is the
    right sum with probability ``correct_frac`` and off by 1 or 2 otherwise: its samples are well
    formed, have two steps (two ``.\\n\\n`` step ends), are right about ``correct_frac`` of the time,
    and the second step decides the outcome (something a step scorer can learn).

    Cheap on CPU: only the few hundred token ids the task uses get embeddings; every other row of the
    (tied) embedding is zero, so its logit is exactly 0 for any input. The loss is the exact
    full-vocabulary cross-entropy computed over the used ids plus one column standing for the zero
    rows (logit ``log(number of zero rows)``). Deterministic under ``seed``; about a minute on 2 cores.
    """
    import math
    import random

    from transformers import Qwen2ForCausalLM

    from metastone.data.prepare import build_prompt  # the training data's prompt, exactly

    out = make_tiny_qwen2(out_dir, tokenizer, seed=seed, head_format="none", **model_kwargs)
    model = Qwen2ForCausalLM.from_pretrained(out, dtype=torch.float32)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def encode(a: int, b: int, x: int) -> tuple[list[int], list[int]]:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": build_prompt(REASONER_QUESTION.format(a=a, b=b))}],
            tokenize=False, add_generation_prompt=True,
        )
        p = tokenizer.encode(prompt, add_special_tokens=False)
        r = tokenizer.encode(REASONER_RESPONSE.format(a=a, b=b, x=x), add_special_tokens=False) + [eos]
        return p, r

    used = {eos, tokenizer.pad_token_id, tokenizer.eos_token_id}
    for a in range(10):
        for b in range(10):
            for x in range(0, 21):
                p, r = encode(a, b, x)
                used.update(p + r)
    used_ids = torch.tensor(sorted(used))
    position = torch.full((model.config.vocab_size,), -1, dtype=torch.long)
    position[used_ids] = torch.arange(len(used_ids))
    embed = model.get_input_embeddings().weight
    with torch.no_grad():
        keep = torch.zeros(embed.shape[0], dtype=torch.bool)
        keep[used_ids] = True
        embed[~keep] = 0.0
    zero_rows = math.log(embed.shape[0] - len(used_ids))

    # the used rows as their own small parameter (written back at the end): the optimizer never
    # touches the 150k-row table
    used_embed = torch.nn.Parameter(embed.detach()[used_ids].clone())
    embed.requires_grad_(False)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad] + [used_embed]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    for step in range(steps):
        pairs = []
        for _ in range(batch_size):
            a, b = rng.randint(0, 9), rng.randint(0, 9)
            x = a + b if rng.random() < correct_frac else max(0, a + b + rng.choice([-2, -1, 1, 2]))
            pairs.append(encode(a, b, x))
        width = max(len(p) + len(r) for p, r in pairs)
        ids = torch.full((batch_size, width), tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((batch_size, width), -100, dtype=torch.long)
        attention = torch.zeros((batch_size, width), dtype=torch.long)
        for i, (p, r) in enumerate(pairs):
            seq = p + r
            ids[i, : len(seq)] = torch.tensor(seq)
            labels[i, len(p) : len(seq)] = torch.tensor(r)
            attention[i, : len(seq)] = 1
        hidden = model.model(inputs_embeds=used_embed[position[ids]], attention_mask=attention).last_hidden_state
        rows, cols = (labels[:, 1:] != -100).nonzero(as_tuple=True)
        logits = hidden[rows, cols] @ used_embed.T  # the tied lm_head, used rows only
        logits = torch.cat([logits, torch.full((len(rows), 1), zero_rows)], dim=1)
        loss = torch.nn.functional.cross_entropy(logits, position[labels[rows, cols + 1]])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        embed[used_ids] = used_embed
    model.eval()
    model.generation_config.eos_token_id = [eos, tokenizer.eos_token_id]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    return out
