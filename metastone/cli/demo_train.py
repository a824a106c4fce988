"""``metastone demo-train``: joint GRPO + SPRM training of the demo model on CPU, then Best-of-N with its own head.

The paper's claim (MetaStone-S1, Sec. 3.2 and 5.4) is that the SPRM head learns to judge steps
*during* RL, from final-answer correctness alone. This command shows it on our scale, with every
step the real code path:

1. the demo policy (SmolLM2-135M-Instruct as Qwen2, ``metastone.assets.smollm2``) and a FRESH head;
2. the demo task's train split as verl data (``metastone.data.prepare.demo_rows``: the evaluation's
   few-shot completion prompts, drafts ending at a blank line);
3. ``python -m metastone.train preset=demo_smollm2``: verl's whole GRPO loop on the CPU platform
   (hf rollout, demo reward, SPR labels, actor + head update, a checkpoint every step). Each step
   prints the mean reward, the head's score gap (correct minus wrong trajectory score) and its
   within-question AUROC on that step's rollouts; each prompt's group is scored in the forward pass
   of the update on it (one update per group), so every value is the head's judgement of drafts it
   has not trained on;
4. ``python -m metastone.export`` of the last step (HF folder + head files, the released layout);
5. ``test/inference.py``'s harness (HF backend) on the first ``--questions`` test questions, K drafts
   each, for the base policy and for the trained one, both scored by the jointly trained head, and
   ``test/compute_metric.py``'s metrics: pass@1, majority vote, SPRM Best-of-K and oracle@K.

Writes ``<out>/aha.png`` (score gap and AUROC vs step), ``<out>/table.md`` and ``<out>/summary.json``.
Every stage resumes: rerunning the command skips finished stages, continues training from the last
checkpoint (verl ``resume_mode=auto``) and finishes only the missing drafts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

PRESET = "demo_smollm2"
# the evaluation's sampling, as `metastone demo` (few-shot prompt, T=0.7, top-p 0.95, no repetition penalty)
EVAL_SAMPLING = dict(max_tokens=64, temperature=0.7, top_p=0.95, repetition_penalty=1.0)
# what each step prints: (label, metrics key, format)
STEP_COLUMNS = (
    ("reward", "critic/score/mean", "{:.3f}"),
    ("invalid", "sprm/label_invalid_frac", "{:.2f}"),
    ("score_gap", "sprm/step_score_gap", "{:+.3f}"),
    ("AUROC", "sprm/within_q_auroc", "{:.3f}"),
    ("spr_loss", "actor/sprm/loss", "{:.3f}"),
    ("s/step", "timing_s/step", "{:.0f}"),
)


def make_parser(subparsers):
    import argparse

    p = subparsers.add_parser("demo-train", help="CPU demo: joint GRPO + SPRM training of the demo model",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo-train", help="working folder (checkpoints, drafts, plot); rerun resumes")
    p.add_argument("--steps", type=int, default=8, help="training steps (8 prompts x 8 rollouts each)")
    p.add_argument("--questions", type=int, default=50, help="first N questions of the demo test split to evaluate")
    p.add_argument("--n-drafts", "--n_drafts", "--drafts", dest="drafts", type=int, default=8, help="drafts per question in the evaluation (K >= 2)")
    p.add_argument("--seed", type=int, default=0, help="data order and sampling seed")
    p.add_argument("--no-progress", "--no_progress", dest="no_progress", action="store_true")
    p.add_argument("overrides", nargs="*", help="extra hydra overrides for the training run (e.g. actor_rollout_ref.sprm.lr=5e-5)")
    p.set_defaults(func=main)
    return p


# ---------------------------------------------------------------------------------------------- stages
class StageFailed(Exception):
    """A stage left work undone; its message says where to look and that rerunning resumes."""


def write_data(out: Path) -> tuple[Path, Path]:
    from metastone.data.prepare import demo_rows, write_parquet

    folder = out / "data"
    train, val = folder / "train.parquet", folder / "val.parquet"
    if not (train.is_file() and val.is_file()):
        write_parquet(demo_rows("train"), train)
        write_parquet(demo_rows("test", limit=8), val)  # verl requires val files; the run does not validate
    return train, val


def last_step(ckpt: Path) -> int:
    """The last checkpointed global step (verl's ``latest_checkpointed_iteration.txt``), 0 if none."""
    marker = ckpt / "latest_checkpointed_iteration.txt"
    try:
        return int(marker.read_text().strip())
    except (FileNotFoundError, ValueError):
        return 0


def read_step_metrics(ckpt: Path) -> dict[int, dict]:
    """Every logged step's metrics from the runs' JSONL files (a resumed run's lines win)."""
    steps: dict[int, dict] = {}
    for path in sorted((ckpt / "metrics").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line being written
                continue
            if isinstance(row, dict) and "step" in row:
                steps[int(row["step"])] = row.get("data", row)
    return steps


def format_step(step: int, metrics: dict) -> str:
    cells = [f"step {step:>3}"]
    for label, key, fmt in STEP_COLUMNS:
        value = metrics.get(key)
        cells.append(f"{label} " + (fmt.format(value) if isinstance(value, (int, float)) else "n/a"))
    return "  ".join(cells)


def train(out: Path, model: Path, data: tuple[Path, Path], steps: int, seed: int, overrides: list[str]) -> None:
    ckpt = out / "ckpt"
    done = last_step(ckpt)
    if done >= steps:
        print(f"  training: {done} steps already checkpointed in {ckpt}", file=sys.stderr)
        return
    cmd = [sys.executable, "-m", "metastone.train", f"preset={PRESET}",
           f"actor_rollout_ref.model.path={model}", f"data.train_files={data[0]}", f"data.val_files={data[1]}",
           f"trainer.default_local_dir={ckpt.resolve()}", f"trainer.total_training_steps={steps}",
           f"data.seed={seed}", f"actor_rollout_ref.rollout.seed={seed}", *overrides]
    log = out / "train.log"
    print(f"  {'resuming after step ' + str(done) if done else 'starting'}; verl's log: {log}", file=sys.stderr)
    shown = set(read_step_metrics(ckpt))
    with log.open("a") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        while True:
            finished = proc.poll() is not None
            for step, metrics in sorted(read_step_metrics(ckpt).items()):
                if step not in shown:
                    shown.add(step)
                    print("  " + format_step(step, metrics), flush=True)
            if finished:
                break
            time.sleep(2)
    if proc.returncode != 0:
        raise StageFailed(f"training failed (exit {proc.returncode}); see {log}. Rerun the same command to resume.")
    if last_step(ckpt) < steps:
        raise StageFailed(f"training stopped at step {last_step(ckpt)} of {steps}; see {log}. Rerun to resume.")


def export(out: Path, steps: int) -> Path:
    from metastone.export import export_checkpoint

    target, stamp = out / "model", out / "model" / ".exported_step"
    if stamp.is_file() and stamp.read_text().strip() == str(steps):
        return target
    actor = out / "ckpt" / f"global_step_{steps}" / "actor"
    partial = out / "model.partial"
    shutil.rmtree(partial, ignore_errors=True)
    export_checkpoint(actor, partial)
    (partial / ".exported_step").write_text(f"{steps}\n")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def base_with_head(out: Path, trained: Path) -> Path:
    """``out/base/model``: links to the base policy's files with the jointly trained head beside them."""
    from metastone.cli.demo import prepare_model_folder

    return prepare_model_folder(out / "base", trained)


def sample(model: Path, questions: Path, drafts_file: Path, k: int, seed: int, progress: bool, dtype: str) -> None:
    """K drafts per question with the harness (HF backend; resumes a partial file).

    bfloat16 where the CPU has it natively, else float32 (emulated bfloat16 is slow; the rule of
    ``metastone demo --dtype auto``); the dtype is in the drafts file's name."""
    from transformers import AutoTokenizer

    from metastone.engines import EngineConfig, make_engines
    from metastone.eval.tasks import load_task
    from metastone.harness.infer import infer, run_config

    with load_task("demo", questions) as task:
        cfg = run_config(task, drafts_file, model, k, local=True, seed=seed, **EVAL_SAMPLING)
        engines = EngineConfig(model_dir=str(model), backend="hf", dtype=dtype)

        def bar():
            from tqdm import tqdm

            return tqdm(unit="draft", disable=not progress, file=sys.stderr, dynamic_ncols=True)

        stats = infer(cfg, task, AutoTokenizer.from_pretrained(model), lambda: make_engines(engines), progress=bar)
    if stats.failures:
        raise StageFailed(f"sampling left {len(stats.failures)} failed drafts in {drafts_file} (first: "
                          f"{stats.failures[0]}); rerun the same command to finish them.")


def evaluate_drafts(questions: Path, drafts_file: Path, k: int) -> dict:
    from metastone.eval.tasks import load_task
    from metastone.metrics.report import evaluate

    with load_task("demo", questions) as task:
        report, _ = evaluate(task, [str(drafts_file)], [1, k])
    rows = {r["N"]: r["metrics"] for r in report["rows"]}
    pick = {"pass@1": (1, "pass@1"), f"maj@{k}": (k, "maj_sampled"), f"SPRM BoN@{k}": (k, "sprm_bon"),
            f"oracle@{k}": (k, "pass@n")}
    return {name: {"mean": rows[n][key]["mean"], "ci": rows[n][key]["ci"]} for name, (n, key) in pick.items()}


def write_initial_head(out: Path, trained: Path) -> Path:
    """``out/heads/step0``: the head every run starts from (``initial_head``), with the trained head's config."""
    from metastone.sprm import SPRMConfig, save_head
    from metastone.train.head_runtime import initial_head

    folder = out / "heads" / "step0"
    config = SPRMConfig.load(trained / "sprm_config.json")
    save_head(initial_head(config.hidden_size, config.dropout), folder, config)
    return folder


def compare_heads(drafts_file: Path, questions: Path, policy: Path, heads: dict[str, Path]) -> dict[str, dict]:
    """Each head's within-question AUROC and Best-of-K accuracy on the SAME drafts (the base policy's).

    Features are read once (``metastone.fit.features``: the prompt's cache shared by its drafts); each
    head scores them as the harness does (step scores, geometric mean); Best-of-K is the metrics' own
    (``best_of_n_exact`` with n = K: the top-scored draft).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from metastone.eval.tasks import load_task
    from metastone.fit.features import question_features
    from metastone.metrics.selection import best_of_n_exact
    from metastone.records import read_records
    from metastone.sprm import load_head, resolve_step_spec
    from metastone.sprm.aggregate import aggregate_list
    from metastone.train.outcome import rank_sums

    records = list(read_records(drafts_file))
    by_question: dict[str, list] = {}
    for r in sorted(records, key=lambda r: (r["question_id"], r["draft"])):
        by_question.setdefault(r["question_id"], []).append(r)
    loaded = {name: load_head(path) for name, path in heads.items()}
    config = next(iter(loaded.values()))[1]
    tokenizer = AutoTokenizer.from_pretrained(policy)
    spec = resolve_step_spec(tokenizer, config.separators, config.think_tokens)
    model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32).eval()
    rows = []  # (question index, correct, {head: score})
    with load_task("demo", questions) as task:
        examples = {e.id: e for e in task.examples}
        for qi, (qid, drafts) in enumerate(by_question.items()):
            prompt_ids = tokenizer(drafts[0]["prompt"])["input_ids"]  # records keep the response's ids only
            if len(prompt_ids) != drafts[0]["prompt_len"]:
                raise ValueError(f"{drafts_file}: question {qid}'s prompt re-tokenizes to {len(prompt_ids)} tokens, "
                                 f"the record says {drafts[0]['prompt_len']}; were the drafts made with {policy}?")
            feats = question_features(model, prompt_ids, [d["token_ids"] for d in drafts], spec,
                                      feature_layer=config.feature_layer)
            for d, f in zip(drafts, feats):
                correct = task.grade(d["response"], examples[qid]).correct
                scores = {}
                for name, (head, cfg) in loaded.items():
                    head.eval()
                    with torch.no_grad():
                        steps = torch.sigmoid(head(f)).tolist() if len(f) else []
                    scores[name] = aggregate_list(steps, cfg.aggregation)
                rows.append((qi, bool(correct), scores))
    groups = torch.tensor([r[0] for r in rows])
    labels = torch.tensor([1.0 if r[1] else 0.0 for r in rows])
    result = {}
    for name in heads:
        scores = torch.tensor([r[2][name] for r in rows], dtype=torch.float64)
        sums = rank_sums(groups, scores, labels)
        bon = []
        for q in range(len(by_question)):
            in_q = groups == q
            correct, q_scores = labels[in_q].bool().tolist(), scores[in_q].tolist()
            bon.append(best_of_n_exact(correct, q_scores, len(correct)))
        result[name] = {"within_q_auroc": sums["sprm/rank_wins"] / sums["sprm/rank_pairs"] if sums["sprm/rank_pairs"] else None,
                        "pairs": int(sums["sprm/rank_pairs"]), "bon": sum(bon) / len(bon)}
    return result


# ---------------------------------------------------------------------------------------------- outputs
def plot_aha(steps: dict[int, dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = sorted(steps)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = (("sprm/step_score_gap", "score gap (correct - wrong)", 0.0),
              ("sprm/within_q_auroc", "within-question AUROC", 0.5),
              ("critic/score/mean", "mean reward (accuracy)", None))
    for ax, (key, title, ref) in zip(axes, panels):
        pts = [(x, steps[x][key]) for x in xs if isinstance(steps[x].get(key), (int, float))]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o")
        if ref is not None:
            ax.axhline(ref, color="grey", lw=0.8, ls="--")
        ax.set_title(title)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    fig.suptitle("Joint GRPO + SPRM on the demo task: the head's judgement of each step's fresh rollouts")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_table(results: dict[str, dict], k: int) -> str:
    cols = ["pass@1", f"maj@{k}", f"SPRM BoN@{k}", f"oracle@{k}"]
    lines = ["| policy (drafts scored by the jointly trained head) | " + " | ".join(cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for name, metrics in results.items():
        cells = [f"{100 * metrics[c]['mean']:.1f}" for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_heads(results: dict[str, dict], k: int) -> str:
    lines = [f"| head, scoring the base policy's drafts | within-question AUROC | SPRM BoN@{k} |", "|---|---:|---:|"]
    for name, r in results.items():
        auroc = "n/a" if r["within_q_auroc"] is None else f"{r['within_q_auroc']:.3f}"
        lines.append(f"| {name} | {auroc} ({r['pairs']} pairs) | {100 * r['bon']:.1f} |")
    return "\n".join(lines)


def main(args) -> int:
    try:
        return run(args)
    except StageFailed as exc:
        print(f"metastone demo-train: {exc}", file=sys.stderr)
        return 1


def run(args) -> int:
    from metastone.assets.smollm2 import demo_head_path, demo_model_dir

    if args.steps < 1 or args.drafts < 2 or args.questions < 1:
        raise ValueError(f"need --steps >= 1, --drafts >= 2 and --questions >= 1; got {args.steps}, {args.drafts}, "
                         f"{args.questions}.")
    started = time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print("[1/5] demo policy (SmolLM2-135M-Instruct as Qwen2)", file=sys.stderr)
    policy = demo_model_dir()
    print("[2/5] demo task train split -> verl data", file=sys.stderr)
    data = write_data(out)
    print(f"[3/5] joint GRPO + SPRM training, {args.steps} steps (verl on CPU; fresh head)", file=sys.stderr)
    t0 = time.monotonic()
    train(out, policy, data, args.steps, args.seed, list(args.overrides))
    train_s = time.monotonic() - t0
    print("[4/5] export of the last step", file=sys.stderr)
    trained = export(out, args.steps)
    print(f"[5/5] Best-of-{args.drafts} on the first {args.questions} test questions, before and after training "
          "(HF backend; resumable)", file=sys.stderr)
    from metastone.cli.demo import question_file

    from metastone.serve.vllm_cpu import cpu_dtype

    questions, dtype = question_file(out, args.questions), cpu_dtype("auto")
    t0 = time.monotonic()
    results = {}
    for name, model in (("SmolLM2 before training", base_with_head(out, trained)),
                        (f"after {args.steps} joint steps", trained)):
        # named by the step whose head scores them (and, for "trained", whose policy wrote them)
        drafts = out / f"drafts-{'base' if model != trained else 'trained'}-step{args.steps}-{args.questions}x{args.drafts}-{dtype}.jsonl"
        sample(model, questions, drafts, args.drafts, args.seed, not args.no_progress, dtype)
        results[name] = evaluate_drafts(questions, drafts, args.drafts)
    heads = {"fresh head (step 0)": write_initial_head(out, trained), f"joint head (step {args.steps})": trained,
             "offline-fitted head (shipped)": demo_head_path()}
    base_drafts = out / f"drafts-base-step{args.steps}-{args.questions}x{args.drafts}-{dtype}.jsonl"
    head_results = compare_heads(base_drafts, questions, policy, heads)
    eval_s = time.monotonic() - t0
    steps = read_step_metrics(out / "ckpt")
    plot = plot_aha(steps, out / "aha.png")
    table = format_table(results, args.drafts) + "\n\n" + format_heads(head_results, args.drafts)
    (out / "table.md").write_text(table + "\n")
    summary = {"steps": {str(s): {k: steps[s].get(k) for _, k, _ in STEP_COLUMNS} for s in sorted(steps)},
               "results": results, "heads_on_base_drafts": head_results, "questions": args.questions,
               "drafts": args.drafts,
               "seconds": {"total": round(time.monotonic() - started), "train": round(train_s), "eval": round(eval_s)}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print()
    print("Per step (the head's score gap and within-question AUROC on the step's own rollouts, before its update):")
    for s in sorted(steps):
        print("  " + format_step(s, steps[s]))
    print()
    print(f"Demo test split, first {args.questions} questions x {args.drafts} drafts (accuracy %):")
    print(table)
    print()
    print(f"plot: {plot}; table: {out / 'table.md'}; summary: {out / 'summary.json'}")
    print(f"time: {time.monotonic() - started:.0f} s in all ({train_s:.0f} s training, {eval_s:.0f} s evaluation)")
    return 0
