"""``metastone train-sprm``: the four resumable stages of fitting an SPRM head on a frozen policy.

Output folder (``--out``)::

    fit_config.json        the options; a rerun with other data options is refused (fields named)
    drafts.jsonl           stage 1: K drafts per question (harness records, one per key, seeded)
    labels.jsonl           stage 2: outcome per draft from the task's grader
    features/shard-*.safetensors   stage 3: feature-layer rows at step positions
    train_state.pt         stage 4: head + optimizer + history after every epoch
    sprm_head.safetensors, score_module.pt, sprm_config.json   the fitted head, both formats
    fit_log.jsonl, fit_report.json, fit_curves.png   per-epoch metrics, final report, curves
    config.json, model.safetensors, tokenizer* ...   links to the model's files (``--link-model``)

Every stage skips what is already on disk, so a run killed at any point is finished by the same
command. Outcome labels: 1 correct, 0 wrong, invalid for a draft cut at the token limit before any
answer was given; ``--invalid-outcome`` trains invalid drafts as wrong (``negative``, the default,
as the original) or leaves them out of the loss (``exclude``). The report counts both.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from metastone.fit.config import FitConfig
from metastone.records import check_or_save_config as save_config
from metastone.sampling import stable_hash

logger = logging.getLogger(__name__)

DRAFTS, LABELS, FEATURES, STATE = "drafts.jsonl", "labels.jsonl", "features", "train_state.pt"
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
               "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
               "vocab.json", "merges.txt")


class NullScorer:
    """Stage 1 samples only: the harness's scorer slot, returning no score."""

    async def score(self, sequences, prompt_lens):
        from metastone.serve.scoring import TraceScore

        return [TraceScore(None, [], []) for _ in sequences]

    async def close(self) -> None:
        return None


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def check_or_save_config(cfg: FitConfig, out: Path) -> None:
    """``fit_config.json``: the options that change the drafts and features, compared on every rerun
    (``records.check_or_save_config``); rewritten each start with the latest other options and argv."""
    save_config(out / "fit_config.json", "data", cfg.data_content(),
                {"data": cfg.data_content(), "config": cfg.to_dict(), "argv": sys.argv},
                mismatch=f"{out} holds drafts/features made with other options",
                fix="Rerun with the same options, or choose a new --out.", update=True)


def load_questions(cfg: FitConfig):
    from metastone.eval.tasks import load_task

    if cfg.data is None and cfg.task != "demo":
        raise ValueError(f"train-sprm: give --data with training questions for task {cfg.task!r} (never fit on the "
                         "benchmark's test questions); only the demo task has a bundled train split.")
    task = load_task(cfg.task, cfg.data, split="train") if cfg.data is None else load_task(cfg.task, cfg.data)
    examples = list(task)
    if cfg.questions:
        examples = examples[:cfg.questions]
    if not examples:
        raise ValueError(f"train-sprm: no questions in {task.source}.")
    task.examples = examples
    return task


def is_heldout(seed: int, question_id: str, frac: float) -> bool:
    return stable_hash(f"heldout:{seed}:{question_id}") / 0xFFFFFFFF < frac


def sample_drafts(cfg: FitConfig, task, tokenizer, out: Path, progress: bool) -> None:
    from tqdm import tqdm

    from metastone.engines import Engines, LocalGenerator
    from metastone.harness.infer import infer, run_config

    # the drafts' sampling is train-sprm's (FitConfig: 256 tokens, T=0.7, no repetition penalty), not the paper's
    rc = run_config(task, out / DRAFTS, Path(cfg.model).name, cfg.n_drafts, backend=cfg.backend, seed=cfg.seed,
                    max_tokens=cfg.max_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                    repetition_penalty=cfg.repetition_penalty, batch_size=cfg.n_drafts * max(1, 32 // cfg.n_drafts),
                    workers=1, group_by_question=cfg.backend == "hf")

    def engines() -> Engines:
        kw = {}
        if cfg.backend == "vllm":
            from metastone.devices import has_cuda

            kw = {"enforce_eager": not has_cuda(), "max_model_len": 2048, "seed": cfg.seed}
        dtype = "bfloat16" if cfg.backend == "vllm" else "float32"
        return Engines(cfg.backend, LocalGenerator(cfg.backend, cfg.model, dtype=dtype, **kw), NullScorer())

    def bar():
        return tqdm(desc="stage 1/4: sampling", unit="draft", disable=not progress, file=sys.stderr, dynamic_ncols=True)

    stats = infer(rc, task, tokenizer, engines, progress=bar)
    if stats.total == stats.before and not stats.failures:
        logger.info("stage 1/4: all %d x %d drafts already sampled", len(task), cfg.n_drafts)
        return
    if stats.failures:
        raise RuntimeError(f"{len(stats.failures)} drafts failed to generate (first: {stats.failures[0]}); rerun the "
                           "same command to retry them.")


def grade_drafts(cfg: FitConfig, task, out: Path) -> dict[str, dict]:
    from metastone.records import read_jsonl, read_records, record_key
    from metastone.sprm.loss import OUTCOME_CORRECT, OUTCOME_INVALID, OUTCOME_WRONG

    path = out / LABELS
    if path.is_file():
        labels = {row["key"]: row for _, row in read_jsonl(path) if row}
        if all(record_key(task.name, ex.id, d) in labels for ex in task for d in range(cfg.n_drafts)):
            return labels
    records = {r["key"]: r for r in read_records(out / DRAFTS)}
    rows, responses, examples = [], [], []
    for ex in task:
        for d in range(cfg.n_drafts):
            key = record_key(task.name, ex.id, d)
            if key not in records:
                raise ValueError(f"{out / DRAFTS}: draft {key} is missing; rerun the same command to sample it.")
            rows.append(records[key])
            responses.append(records[key]["response"])
            examples.append(ex)
    grades = task.grade_batch(responses, examples)
    labels = {}
    for rec, ex, g in zip(rows, examples, grades):
        truncated = rec.get("finish_reason") == "length" and g.extracted is None
        outcome = OUTCOME_INVALID if truncated else OUTCOME_CORRECT if g.correct else OUTCOME_WRONG
        labels[rec["key"]] = {"key": rec["key"], "question_id": ex.id, "draft": rec["draft"], "correct": bool(g.correct),
                              "extracted": g.extracted, "outcome": outcome}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(v) + "\n" for v in labels.values()))
    os.replace(tmp, path)
    n = len(labels)
    logger.info("stage 2/4: graded %d drafts: %.1f%% correct, %d invalid (--invalid-outcome %s)", n,
                100 * sum(v["correct"] for v in labels.values()) / n,
                sum(v["outcome"] == OUTCOME_INVALID for v in labels.values()), cfg.invalid_outcome)
    return labels


def extract_all(cfg: FitConfig, task, tokenizer, spec, out: Path, progress: bool) -> None:
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM

    from metastone.fit.features import question_features, shard_path, write_shard
    from metastone.records import read_records, record_key

    folder = out / FEATURES
    folder.mkdir(exist_ok=True)
    questions = list(task)
    shards = [questions[i:i + cfg.shard_questions] for i in range(0, len(questions), cfg.shard_questions)]
    todo = [i for i in range(len(shards)) if not shard_path(folder, i).is_file()]
    if not todo:
        return
    records = {r["key"]: r for r in read_records(out / DRAFTS)}
    model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=getattr(torch, cfg.feature_dtype)).eval()
    torch.set_grad_enabled(False)
    bar = tqdm(total=sum(len(shards[i]) for i in todo), desc="stage 3/4: features", unit="question",
               disable=not progress, file=sys.stderr, dynamic_ncols=True)
    for i in todo:
        keys, feats = [], []
        for ex in shards[i]:
            recs = [records[record_key(task.name, ex.id, d)] for d in range(cfg.n_drafts)]
            prompt_ids = tokenizer.encode(recs[0]["prompt"], add_special_tokens=False)
            if len(prompt_ids) != recs[0]["prompt_len"]:
                raise ValueError(f"{out / DRAFTS}: question {ex.id}: the prompt re-encodes to {len(prompt_ids)} tokens, "
                                 f"the record says {recs[0]['prompt_len']}; was it sampled with another tokenizer?")
            keys += [r["key"] for r in recs]
            feats += question_features(model, prompt_ids, [r["token_ids"] for r in recs], spec, cfg.feature_layer,
                                       cfg.feature_batch)
            bar.update(1)
        write_shard(shard_path(folder, i), keys, feats)
    bar.close()
    torch.set_grad_enabled(True)


def load_items(cfg: FitConfig, labels: dict, out: Path):
    from metastone.fit.features import read_shard
    from metastone.fit.trainer import Item

    train, held = [], []
    for path in sorted((out / FEATURES).glob("shard-*.safetensors")):
        for key, feats in read_shard(path).items():
            lab = labels[key]
            item = Item(key, lab["question_id"], feats, lab["outcome"], lab["correct"])
            (held if is_heldout(cfg.seed, lab["question_id"], cfg.heldout_frac) else train).append(item)
    return train, held


def link_model_files(model_dir: Path, out: Path) -> None:
    """Links to the model's files in ``out`` (plus a weights index, so a head file there is never read as weights)."""
    from metastone.sprm.io import ensure_weights_index

    for name in MODEL_FILES:
        src, dst = model_dir / name, out / name
        if src.is_file() and not dst.exists():
            os.symlink(src.resolve(), dst)
    ensure_weights_index(out)


def plot_curves(history: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(ep, [h["train_loss"] for h in history], label="train SPR loss")
    axes[0].plot(ep, [h["kept_step_frac"] for h in history], label="kept-step fraction")
    axes[0].set_xlabel("epoch"); axes[0].legend(); axes[0].set_title("loss")
    for split, style in (("train", "-"), ("heldout", "--")):
        axes[1].plot(ep, [h[f"{split}_correct_score"] for h in history], style, color="tab:green", label=f"{split} correct")
        axes[1].plot(ep, [h[f"{split}_wrong_score"] for h in history], style, color="tab:red", label=f"{split} wrong")
    axes[1].set_xlabel("epoch"); axes[1].set_title("mean trajectory score"); axes[1].legend(fontsize=8)
    axes[2].plot(ep, [h["heldout_auroc"] for h in history], label="AUROC (pooled)")
    axes[2].plot(ep, [h.get("heldout_auroc_within") for h in history], label="AUROC (within question)")
    for k in sorted(k for k in history[-1] if k.startswith("heldout_bon@") or k.startswith("heldout_oracle@")
                    or k == "heldout_pass@1"):
        axes[2].plot(ep, [h.get(k) for h in history], label=k.removeprefix("heldout_"))
    axes[2].set_xlabel("epoch"); axes[2].set_title("held-out"); axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fit(cfg: FitConfig, progress: bool = True) -> dict:
    """Run (or finish) every stage; returns the final report."""
    from transformers import AutoConfig, AutoTokenizer

    from metastone.fit.trainer import train_head
    from metastone.sprm import OUTCOME_INVALID, OUTCOME_WRONG
    from metastone.sprm.io import save_head
    from metastone.sprm.steps import resolve_step_spec

    model_dir = Path(cfg.model)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"--model {model_dir}: not a Hugging Face model folder (no config.json).")
    task = load_questions(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    check_or_save_config(cfg, out)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    spec = resolve_step_spec(tokenizer, cfg.separators, cfg.think_tokens)  # fails early on a multi-token separator
    hidden = AutoConfig.from_pretrained(model_dir).get_text_config().hidden_size
    try:
        sample_drafts(cfg, task, tokenizer, out, progress)
        labels = grade_drafts(cfg, task, out)
    finally:
        task.close()
    extract_all(cfg, task, tokenizer, spec, out, progress)
    train, held = load_items(cfg, labels, out)
    if not train or not held:
        raise ValueError(f"train-sprm: {len(train)} train and {len(held)} held-out drafts; use more --questions or "
                         "another --heldout-frac.")

    def show(row):
        logger.info("epoch %d: loss %.4f kept %.2f | held-out AUROC %s (within question %s), correct %.3f vs wrong %.3f, "
                    "BoN@%d %.3f", row["epoch"], row["train_loss"], row["kept_step_frac"],
                    "n/a" if row["heldout_auroc"] is None else f"{row['heldout_auroc']:.3f}",
                    "n/a" if row["heldout_auroc_within"] is None else f"{row['heldout_auroc_within']:.3f}",
                    row["heldout_correct_score"] or 0.0, row["heldout_wrong_score"] or 0.0, cfg.n_drafts,
                    row.get(f"heldout_bon@{cfg.n_drafts}") or 0.0)

    head, history, best_epoch = train_head(train, held, hidden, cfg, out / STATE, on_epoch=show)
    save_head(head, out, cfg.head_config(hidden), released_format=True)
    (out / "fit_log.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    best = next(h for h in history if h["epoch"] == best_epoch)
    n_steps = [it.features.shape[0] for it in train + held]
    report = {"best_epoch": best["epoch"], "epochs_run": len(history), "heldout": {k.removeprefix("heldout_"): v for k, v in best.items() if k.startswith("heldout_")},
              "train_drafts": len(train), "heldout_drafts": len(held),
              "train_wrong_drafts": sum(it.outcome == OUTCOME_WRONG for it in train),
              "train_invalid_drafts": sum(it.outcome == OUTCOME_INVALID for it in train),
              "invalid_outcome": cfg.invalid_outcome,
              "steps_per_draft": sum(n_steps) / len(n_steps), "drafts_without_steps": sum(n == 0 for n in n_steps)}
    _write_json(out / "fit_report.json", report)
    if cfg.plot:
        plot_curves(history, out / "fit_curves.png")
    if cfg.link_model:
        link_model_files(model_dir, out)
    return report
