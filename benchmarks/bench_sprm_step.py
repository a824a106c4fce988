"""One joint policy + SPRM training step without verl: the GPU check's training step, and its export.

    python benchmarks/bench_sprm_step.py --shape 1.5b --device cuda --json out.json --save DIR   # GPU check
    python benchmarks/bench_sprm_step.py --shape tiny --device cpu                               # anywhere

A random Qwen2 of the chosen shape (real Qwen vocabulary), wrapped with FSDP2 (``fully_shard`` per
decoder layer and on the whole model, one rank: gloo on CPU, NCCL on CUDA; bf16 compute with fp32
parameters and reductions, as verl's FSDP2 engine) and HF gradient checkpointing. Each step: one
forward; the policy term is next-token cross-entropy (a stand-in for the GRPO loss: same backward
through the LM head); the SPR term reads the decoder input of layer -2 (captured by a forward
pre-hook, as ``metastone.train.engine`` does) at the step positions of the batch, through
``scale_gradient`` (``backbone_grad_scale`` 1e-4) and the head (fp32) into ``spr_loss``; backward;
AdamW on the backbone and a separate AdamW on the head. Steps with and without the SPR term alternate
on the same batch, so the head's overhead (% of the step) compares like with like.

Reports (JSON): losses finite, median step time with and without the head and the overhead, tokens/s,
peak memory. ``--save DIR`` then writes what the step trained as a released-style folder (HF model +
tokenizer + ``score_module.pt``) and the in-training step scores of a trace, which ``metastone score``
of that folder must reproduce (``--check-export``, run by the GPU check).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_train_step import init_process_group  # noqa: E402

SHAPES = {  # hidden, layers, heads, kv heads, intermediate
    "tiny": (64, 4, 4, 2, 128),
    "0.5b": (896, 24, 14, 2, 4864),
    "1.5b": (1536, 28, 12, 2, 8960),
}
VOCAB = 151936  # Qwen2's embedding rows for these shapes
TRACE = ("<|im_start|>user\nWhat is 17+25?<|im_end|>\n<|im_start|>assistant\n<think>\n"
         "Add the tens: 10+20 is 30.\n\nAdd the ones: 7+5 is 12.\n\nSo 30+12 is 42.\n\n</think>\nThe answer is 42.")
STEP_EVERY = 64  # one step boundary every this many tokens of the random batch


def build(shape: str, device: str, dtype: torch.dtype, checkpointing: bool):
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from metastone.sprm import SPRMHead

    hidden, layers, heads, kv, inter = SHAPES[shape]
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv, intermediate_size=inter, max_position_embeddings=32768,
                      tie_word_embeddings=True, use_cache=False)  # as Qwen2.5-0.5B / 1.5B
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM._from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)
        head = SPRMHead(hidden)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for layer in model.model.layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model, head


def batch(batch_size: int, seq_len: int, device: str):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 150000, (batch_size, seq_len), generator=g)
    mask = torch.zeros(batch_size, seq_len, dtype=torch.bool)
    mask[:, STEP_EVERY // 2 :: STEP_EVERY] = True
    outcome = torch.tensor([i % 2 for i in range(batch_size)], dtype=torch.float32)  # half correct, half wrong
    return ids.to(device), mask.to(device), outcome.to(device)


class Capture:
    """The input of the decoder layer whose input is ``hidden_states[-2]`` (first call per forward)."""

    def __init__(self, model):
        from metastone.sprm.features import layer_input_index

        layers = model.model.layers
        self.value = None
        layers[layer_input_index(len(layers), -2)].register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        if self.value is None:  # gradient checkpointing runs the layer again in backward
            self.value = args[0] if args else kwargs["hidden_states"]


def train_step(model, head, capture, opts, ids, mask, outcome, with_head: bool) -> dict:
    from metastone.sprm import scale_gradient, spr_loss

    capture.value = None
    logits = model(input_ids=ids).logits
    policy = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
    loss, out = policy, {"policy_loss": float(policy.detach())}
    if with_head:
        rows, cols = mask.nonzero(as_tuple=True)
        features = scale_gradient(capture.value[rows, cols].float(), 1e-4)
        step_logits = torch.zeros(mask.shape, device=ids.device).index_put((rows, cols), head(features))
        sloss, metrics = spr_loss(step_logits, outcome, mask)
        loss = loss + sloss
        out.update(sprm_loss=float(sloss.detach()), steps=int(mask.sum()))
    loss.backward()
    for opt in opts:
        opt.step()
        opt.zero_grad(set_to_none=True)
    return out


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_memory_gib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (process RSS)


def in_training_scores(model, head, capture, tokenizer, device: str) -> dict:
    """Step scores of ``TRACE`` from the model and head as they are in training (eval mode, no gradient)."""
    from metastone.sprm import SPRMConfig, resolve_step_spec, step_positions

    cfg = SPRMConfig(hidden_size=head.hidden_size)
    spec = resolve_step_spec(tokenizer, cfg.separators, cfg.think_tokens)
    ids = tokenizer.encode(TRACE, add_special_tokens=False)
    positions = step_positions(ids, 0, spec)
    model.eval()
    head.eval()
    capture.value = None
    with torch.no_grad():
        model(input_ids=torch.tensor([ids], device=device))
        probs = head.probs(capture.value[0, positions].float())
    return {"token_ids": ids, "score_positions": positions, "all_scores": probs.tolist()}


def save(model, head, tokenizer, out: Path) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from metastone.sprm import SPRMConfig, save_head

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    model.save_pretrained(out, state_dict=state)
    tokenizer.save_pretrained(out)
    save_head(head.cpu(), out, SPRMConfig(hidden_size=head.hidden_size))  # score_module.pt (released) + ours


def check_export(folder: Path, reference: dict, device: str, tol: float) -> dict:
    """``metastone score`` of the saved folder (a subprocess, as a user runs it) against the in-training scores."""
    (folder / "trace.txt").write_text(TRACE)
    cmd = [sys.executable, "-m", "metastone", "score", "--model", str(folder), "--text-file",
           str(folder / "trace.txt"), "--device", device]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"metastone score failed ({done.returncode}):\n{done.stderr[-3000:]}")
    got = json.loads(done.stdout.strip().splitlines()[-1])
    if got["token_ids"] != reference["token_ids"] or got["score_positions"] != reference["score_positions"]:
        raise SystemExit(f"export: positions differ: {got['score_positions']} vs {reference['score_positions']}")
    diff = max((abs(a - b) for a, b in zip(got["all_scores"], reference["all_scores"])), default=0.0)
    if not reference["score_positions"] or diff > tol:
        raise SystemExit(f"export: step scores differ from the in-training head's by {diff:.2e} (tolerance {tol})")
    return {"export_steps": len(reference["score_positions"]), "export_max_abs_diff": diff, "export_tolerance": tol}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 4096 on CUDA, 256 on CPU)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps of each kind (after one warm-up of each)")
    ap.add_argument("--no-checkpointing", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--save", type=Path, help="write the trained model + head here and check `metastone score` of it")
    args = ap.parse_args(argv)
    from metastone.assets.qwen_tokenizer import build_qwen_tokenizer

    device, dtype = args.device, {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    seq_len = args.seq_len or (4096 if device.startswith("cuda") else 256)
    init_process_group(device.startswith("cuda"))  # one rank: gloo on CPU, NCCL on CUDA
    model, head = build(args.shape, device, dtype, not args.no_checkpointing)
    capture = Capture(model)
    opts = [torch.optim.AdamW(model.parameters(), lr=1e-6), torch.optim.AdamW(head.parameters(), lr=1e-4)]
    ids, mask, outcome = batch(args.batch, seq_len, device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times, losses = {True: [], False: []}, []
    for i in range(args.steps + 1):
        for with_head in (True, False):
            sync(device)
            t0 = time.perf_counter()
            losses.append(train_step(model, head, capture, opts, ids, mask, outcome, with_head))
            sync(device)
            if i:  # the first of each kind is a warm-up
                times[with_head].append(time.perf_counter() - t0)
    with_head, without = statistics.median(times[True]), statistics.median(times[False])
    finite = all(torch.isfinite(torch.tensor(v)).item() for x in losses for v in x.values())
    report = {
        "shape": args.shape, "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else device,
        "dtype": args.dtype, "checkpointing": not args.no_checkpointing, "batch": args.batch, "seq_len": seq_len,
        "params": sum(p.numel() for p in model.parameters()), "head_params": sum(p.numel() for p in head.parameters()),
        "steps_per_kind": args.steps, "finite": finite, "last": losses[-2],
        "step_s_with_head": with_head, "step_s_without_head": without,
        "head_overhead_pct": 100.0 * (with_head - without) / without,
        "tokens_per_s": args.batch * seq_len / with_head, "peak_memory_gib": peak_memory_gib(device),
    }
    if args.save:
        tokenizer = build_qwen_tokenizer("qwq")
        reference = in_training_scores(model, head, capture, tokenizer, device)
        save(model, head, tokenizer, args.save)
        report.update(check_export(args.save, reference, device, tol=3e-2 if args.dtype == "bf16" else 1e-4))
    print(json.dumps(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if not finite:
        raise SystemExit("a loss is not finite")
    return report


if __name__ == "__main__":
    main()
