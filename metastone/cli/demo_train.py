"""``metastone demo-train``: joint GRPO + SPRM training of the demo model on CPU, then Best-of-N with its own head.

The paper's claim (MetaStone-S1, Sec. 3.2 and 5.4) is that the SPRM head learns to judge steps
*during* RL, from final-answer correctness alone. This command shows it on our scale, with every
step the real code path:

1. the demo policy (SmolLM2-135M-Instruct as Qwen2, ``metastone.assets.smollm2``) and a FRESH head;
2. the demo task's train split as verl data (``metastone.data.prepare.demo_rows``: the evaluation's
   few-shot completion prompts, drafts ending at a blank line);
3. the base policy's K drafts for the first ``--questions`` test questions (``test/inference.py``'s
   harness: in-process vLLM of the serving environment ``.venv`` when it exists, as a subprocess, else
   the HF backend), sampled once; their step features (base policy, float32) are the validation
   set the training run scores with the head in eval mode (``metastone.train.head_validation``), and
   the head comparison at the end reuses them;
4. ``python -m metastone.train preset=demo_smollm2``: verl's whole GRPO loop on the CPU platform
   (hf rollout, demo reward, SPR labels, actor + head update, checkpoints). Each step prints the mean
   reward, the head's within-question AUROC on that step's rollouts (dropout on, before its update)
   and, when validated, on the validation set (eval mode) with its Best-of-K;
5. ``python -m metastone.export`` of the last step (HF folder + head files, the released layout);
6. the trained policy's K drafts on the same questions, and ``test/compute_metric.py``'s metrics for
   both policies (pass@1, majority vote, SPRM Best-of-K with the joint head, oracle@K); three heads on
   the base drafts (fresh, joint, the offline-fitted one shipped for ``metastone demo``).

``--original`` trains with the original's head settings on the same budget (raw features, one head
update per prompt group, no replay, head lr 2e-5), for comparison with the preset's small-scale
options (docs/differences.md). Writes ``<out>/aha.png``, ``<out>/table.md`` and ``<out>/summary.json``.
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

from metastone.sampling import DEMO_SAMPLING, sampling_kwargs

PRESET = "demo_smollm2"
# the evaluation's sampling: `metastone demo`'s (metastone.sampling.DEMO_SAMPLING)
EVAL_SAMPLING = sampling_kwargs(DEMO_SAMPLING)
# what each step prints: (label, metrics key, format)
STEP_COLUMNS = (
    ("reward", "critic/score/mean", "{:.3f}"),
    ("invalid", "sprm/label_invalid_frac", "{:.2f}"),
    ("score_gap", "sprm/step_score_gap", "{:+.3f}"),
    ("AUROC", "sprm/within_q_auroc", "{:.3f}"),
    ("val_AUROC", "actor/sprm/val_auroc", "{:.3f}"),
    ("val_BoN", "actor/sprm/val_bon", "{:.3f}"),
    ("spr_loss", "actor/sprm/loss", "{:.3f}"),
    ("s/step", "timing_s/step", "{:.0f}"),
)
# --original: the original's head settings on the same budget (no small-scale option; the head lr and
# one head update per prompt group of the earlier demo preset)
ORIGINAL_HEAD = ("actor_rollout_ref.sprm.standardize_features=false", "actor_rollout_ref.sprm.replay_passes=0",
                 "actor_rollout_ref.sprm.agreement=sign", "actor_rollout_ref.sprm.lr=2e-5",
                 "actor_rollout_ref.actor.ppo_mini_batch_size=1")
VALIDATION_FILE = "val-features.safetensors"
# on a CPU with native bfloat16 (the rule of `metastone demo --dtype auto`) the policy update computes in
# bfloat16 (fp32 master weights and reductions, verl's GPU default): 2 cores, update_actor 34-44 s against
# 72 s in fp32. The rollout stays fp32: HF generate's small decoding batches were slower in bfloat16
# (26-30 s against 20 s a step). Elsewhere the preset's fp32 (emulated bfloat16 is slow).
BF16_TRAINING = ("actor_rollout_ref.actor.fsdp_config.mixed_precision.param_dtype=bf16",)
# drafts in flight when sampling the evaluation on the HF backend: one generate call over 8 questions x 8
EVAL_BATCH = 64


def make_parser(subparsers):
    import argparse

    p = subparsers.add_parser("demo-train", help="CPU demo: joint GRPO + SPRM training of the demo model",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo-train", help="working folder (checkpoints, drafts, plot); rerun resumes")
    p.add_argument("--steps", type=int, default=12, help="training steps (4 prompts x 8 rollouts each)")
    p.add_argument("--questions", type=int, default=50, help="first N questions of the demo test split to evaluate")
    p.add_argument("--n-drafts", "--n_drafts", "--drafts", dest="drafts", type=int, default=8, help="drafts per question in the evaluation (K >= 2)")
    p.add_argument("--seed", type=int, default=0, help="data order and sampling seed")
    p.add_argument("--original", action="store_true",
                   help="the original's head settings (raw features, one update per group, no replay) on the same budget")
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
    """The last checkpointed global step (verl's tracker file), 0 if none."""
    from metastone.train.checkpoints import TRACKER

    marker = ckpt / TRACKER
    try:
        return int(marker.read_text().strip())
    except (FileNotFoundError, ValueError):
        return 0


def read_step_metrics(ckpt: Path) -> dict[int, dict]:
    """Every logged step's metrics from the runs' JSONL files (a resumed run's lines win; a line being written
    is skipped)."""
    from metastone.records import read_jsonl

    steps: dict[int, dict] = {}
    for path in sorted((ckpt / "metrics").glob("*.jsonl")):
        for _, row in read_jsonl(path):
            if isinstance(row, dict) and "step" in row:
                steps[int(row["step"])] = row.get("data", row)
    return steps


def format_step(step: int, metrics: dict) -> str:
    cells = [f"step {step:>3}"]
    for label, key, fmt in STEP_COLUMNS:
        value = metrics.get(key)
        cells.append(f"{label} " + (fmt.format(value) if isinstance(value, (int, float)) else "n/a"))
    return "  ".join(cells)


def train(out: Path, model: Path, data: tuple[Path, Path], steps: int, seed: int, overrides: list[str],
          validation: Path | None = None) -> None:
    ckpt = out / "ckpt"
    done = last_step(ckpt)
    if done >= steps:
        print(f"  training: {done} steps already checkpointed in {ckpt}", file=sys.stderr)
        return
    cmd = [sys.executable, "-m", "metastone.train", f"preset={PRESET}",
           f"actor_rollout_ref.model.path={model}", f"data.train_files={data[0]}", f"data.val_files={data[1]}",
           f"trainer.default_local_dir={ckpt.resolve()}", f"trainer.total_training_steps={steps}",
           f"data.seed={seed}", f"actor_rollout_ref.rollout.seed={seed}",
           *([f"actor_rollout_ref.sprm.validation_file={validation.resolve()}"] if validation else []), *overrides]
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


def serving_metastone() -> Path | None:
    """The serving environment's ``metastone`` (``make setup-serve``: ``.venv`` beside this environment, or in
    the working folder), or None when there is none."""
    for root in (Path(sys.prefix).parent / ".venv", Path.cwd() / ".venv"):
        exe = root / "bin" / "metastone"
        if exe.is_file() and root.resolve() != Path(sys.prefix).resolve():
            return exe
    return None


def sample(model: Path, questions: Path, drafts_file: Path, k: int, seed: int, progress: bool, dtype: str,
           backend: str) -> None:
    """K drafts per question with the harness (resumes a partial file), each scored by the policy as it decodes
    (the scorer's scores, tested: no second pass over the drafts).

    ``backend`` vllm: ``metastone infer --backend vllm`` of the serving environment, as a subprocess (this
    environment has verl's transformers and no vLLM); hf: in this process. bfloat16 where the CPU has it
    natively, else float32 (the rule of ``metastone demo --dtype auto``); backend and dtype are in the
    drafts file's name."""
    if backend == "vllm":
        cmd = [str(serving_metastone()), "infer", "--task", "demo", "--input_file", str(questions), "--out",
               str(drafts_file), "--model_dir", str(model), "--backend", "vllm", "--score_while_generating",
               "--n_samples", str(k), "--seed", str(seed), "--dtype", dtype, "--max_model_len", "512",
               *[f"--{name}={value}" for name, value in EVAL_SAMPLING.items()], *([] if progress else ["--no_progress"])]
        proc = subprocess.run(cmd, env={name: v for name, v in os.environ.items() if name not in ("PYTHONPATH", "VIRTUAL_ENV")})
        if proc.returncode != 0:
            raise StageFailed(f"sampling with the serving environment failed (exit {proc.returncode}: "
                              f"{' '.join(cmd)}); rerun the same command to finish the missing drafts.")
        return
    from transformers import AutoTokenizer

    from metastone.engines import EngineConfig, make_engines
    from metastone.eval.tasks import load_task
    from metastone.harness.infer import infer, run_config

    with load_task("demo", questions) as task:
        cfg = run_config(task, drafts_file, model, k, backend="hf", seed=seed, batch_size=EVAL_BATCH, **EVAL_SAMPLING)
        engines = EngineConfig(model_dir=str(model), backend="hf", dtype=dtype, score_while_generating=True)

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


def write_initial_head(out: Path, config) -> Path:
    """``out/heads/step0``: the head every run starts from (``initial_head``) with the preset's head config."""
    from metastone.sprm import save_head
    from metastone.train.head_runtime import initial_head

    folder = out / "heads" / "step0"
    if not (folder / "sprm_head.safetensors").is_file():
        save_head(initial_head(config.hidden_size, config.dropout), folder, config)
    return folder


def validation_set(policy: Path, drafts_file: Path, questions: Path, out: Path, head):
    """The base drafts' step features (base policy, float32) at the steps of ``head`` (the preset's
    ``SPRMConfig``): the training run's validation set and the head comparison's input. Written once
    (``out/val-features.safetensors``)."""
    from metastone.eval.tasks import load_task
    from metastone.train.head_validation import ValidationSet, write_validation_set

    path = out / VALIDATION_FILE
    if path.is_file():
        return ValidationSet.load(path)
    with load_task("demo", questions) as task:
        examples = {e.id: e for e in task.examples}
        return write_validation_set(policy, drafts_file, lambda r: task.grade(r["response"], examples[r["question_id"]]).correct,
                                    path, separators=head.separators, think_tokens=head.think_tokens,
                                    feature_layer=head.feature_layer)


# ---------------------------------------------------------------------------------------------- outputs
def plot_aha(steps: dict[int, dict], path: Path) -> Path:
    """Top: the head on the fixed validation set (eval mode) against the step; bottom: the per-step
    rollout metrics (the head's judgement of each step's fresh rollouts, and the policy's reward)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    xs = sorted(steps)
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    panels = (("actor/sprm/val_auroc", "validation: within-question AUROC", 0.5),
              ("actor/sprm/val_bon", "validation: SPRM Best-of-K (line: pass@1)", "actor/sprm/val_pass1"),
              ("actor/sprm/val_mean_score", "validation: mean draft score", None),
              ("sprm/within_q_auroc", "rollouts: within-question AUROC", 0.5),
              ("sprm/step_score_gap", "rollouts: score gap (correct - wrong)", 0.0),
              ("critic/score/mean", "rollouts: mean reward (accuracy)", None))
    for ax, (key, title, ref) in zip(axes.flat, panels):
        pts = [(x, steps[x][key]) for x in xs if isinstance(steps[x].get(key), (int, float))]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o")
        if isinstance(ref, str):  # a reference read from the metrics (constant over steps)
            ref = next((steps[x][ref] for x in xs if isinstance(steps[x].get(ref), (int, float))), None)
        if ref is not None:
            ax.axhline(ref, color="grey", lw=0.8, ls="--")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.suptitle("Joint GRPO + SPRM on the demo task: the head learning to judge during RL")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_policy_table(results: dict[str, dict], k: int) -> str:
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


def base_drafts_file(out: Path, nq: int, k: int, backend: str, dtype: str) -> Path:
    """``drafts-base-{nq}x{k}-{backend}-{dtype}.jsonl``; in a folder whose validation set exists already, the base
    drafts it was read from, whichever backend sampled them (the training run validated on those)."""
    names = [f"drafts-base-{nq}x{k}-{b}-{dtype}.jsonl" for b in (backend, "hf" if backend == "vllm" else "vllm")]
    if (out / VALIDATION_FILE).is_file():
        for name in [*names, f"drafts-base-{nq}x{k}-{dtype}.jsonl"]:  # the last: named before the backend was
            if (out / name).is_file():
                return out / name
    return out / names[0]


def base_stage(model: Path, policy: Path, questions: Path, drafts: Path, out: Path, k: int, seed: int, progress: bool,
               dtype: str, backend: str, head) -> None:
    sample(model, questions, drafts, k, seed, progress, dtype, backend)
    validation_set(policy, drafts, questions, out, head)


def _child(queue, fn, args) -> None:
    try:
        fn(*args)
        queue.put(None)
    except BaseException as exc:  # noqa: BLE001 (reported to the parent, which raises it)
        queue.put(f"{type(exc).__name__}: {exc}")


def in_child(fn, *args) -> None:
    """``fn(*args)`` in a spawned process (its memory is freed when it ends); its error is raised here."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, fn, args))
    proc.start()
    proc.join()
    error = queue.get() if not queue.empty() else f"the process exited with code {proc.exitcode}"
    if error is not None:
        raise StageFailed(f"{fn.__name__}: {error}. Rerun the same command to resume.")


def preset_head(policy: Path):
    """The ``SPRMConfig`` of the preset's head (``actor_rollout_ref.sprm``) on ``policy``: what its heads are
    saved with and where the validation set reads step features."""
    from transformers import AutoConfig

    from metastone.train.config import SPRMTrainConfig
    from metastone.train.launch import compose_config

    train_cfg = SPRMTrainConfig.from_mapping(compose_config([f"preset={PRESET}"]).actor_rollout_ref.sprm)
    hidden = AutoConfig.from_pretrained(policy).get_text_config().hidden_size
    return train_cfg.head_config(int(hidden))


def run(args) -> int:
    from metastone.assets.smollm2 import demo_head_path, demo_model_dir
    from metastone.cli.demo import prepare_model_folder, question_file
    from metastone.serve.vllm.cpu import cpu_dtype

    if args.steps < 1 or args.drafts < 2 or args.questions < 1:
        raise ValueError(f"need --steps >= 1, --drafts >= 2 and --questions >= 1; got {args.steps}, {args.drafts}, "
                         f"{args.questions}.")
    started = time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    k, nq = args.drafts, args.questions
    print("[1/6] demo policy (SmolLM2-135M-Instruct as Qwen2)", file=sys.stderr)
    policy = demo_model_dir()
    print("[2/6] demo task train split -> verl data", file=sys.stderr)
    data = write_data(out)
    backend = "vllm" if serving_metastone() is not None else "hf"
    if backend == "hf":
        print("  no serving environment (.venv with vLLM, `make setup-serve`) beside this one: the evaluation samples "
              "on the HF backend, several times slower", file=sys.stderr)
    print(f"[3/6] the base policy's {k} drafts for the first {nq} test questions ({backend} backend; resumable) and "
          "their step features: the validation set", file=sys.stderr)
    t0 = time.monotonic()
    questions, dtype = question_file(out, nq), cpu_dtype("auto")
    head_config = preset_head(policy)
    fresh = write_initial_head(out, head_config)
    base_drafts = base_drafts_file(out, nq, k, backend, dtype)
    # in a child process: the sampling engine and the feature model give their memory back to the OS
    # before training starts (training on 2 cores uses ~20 of 24 GB; kept in this process, they ran it out)
    in_child(base_stage, prepare_model_folder(out / "base", fresh), policy, questions, base_drafts, out, k, args.seed,
             not args.no_progress, dtype, backend, head_config)
    from metastone.train.head_validation import ValidationSet, evaluate_head_files

    valset = ValidationSet.load(out / VALIDATION_FILE)
    base_s = time.monotonic() - t0
    overrides = [*(BF16_TRAINING if dtype == "bfloat16" else ()), *(ORIGINAL_HEAD if args.original else ()),
                 *args.overrides]
    print(f"[4/6] joint GRPO + SPRM training, {args.steps} steps (verl on CPU; fresh head"
          f"{'; the original head settings' if args.original else ''})", file=sys.stderr)
    t0 = time.monotonic()
    train(out, policy, data, args.steps, args.seed, overrides, validation=out / VALIDATION_FILE)
    train_s = time.monotonic() - t0
    print("[5/6] export of the last step", file=sys.stderr)
    trained = export(out, args.steps)
    print(f"[6/6] the trained policy's {k} drafts on the same questions ({backend} backend; resumable); metrics",
          file=sys.stderr)
    t0 = time.monotonic()
    heads = {"fresh head (step 0)": fresh, f"joint head (step {args.steps})": trained,
             "offline-fitted head (shipped)": demo_head_path()}
    head_results = evaluate_head_files(valset, heads)
    trained_drafts = out / f"drafts-trained-step{args.steps}-{nq}x{k}-{backend}-{dtype}.jsonl"
    sample(trained, questions, trained_drafts, k, args.seed, not args.no_progress, dtype, backend)
    results = {"SmolLM2 before training": evaluate_drafts(questions, base_drafts, k),
               f"after {args.steps} joint steps": evaluate_drafts(questions, trained_drafts, k)}
    # the base drafts were scored by the fresh head when sampled: their SPRM row is the joint head's, read
    # from the same drafts and features (evaluate_head_files), as the trained policy's drafts are scored by it
    results["SmolLM2 before training"][f"SPRM BoN@{k}"] = {"mean": head_results[f"joint head (step {args.steps})"]["bon"],
                                                           "ci": None}
    eval_s = time.monotonic() - t0
    # this run's steps (a folder trained further before, then rerun with fewer --steps, keeps only these)
    steps = {s: m for s, m in read_step_metrics(out / "ckpt").items() if s <= args.steps}
    plot = plot_aha(steps, out / "aha.png")
    table = format_policy_table(results, k) + "\n\n" + format_heads(head_results, k)
    (out / "table.md").write_text(table + "\n")
    summary = {"steps": {str(s): {key: steps[s].get(key) for _, key, _ in STEP_COLUMNS} for s in sorted(steps)},
               "results": results, "heads_on_base_drafts": head_results, "questions": nq, "drafts": k,
               "seed": args.seed, "original_head_settings": args.original, "overrides": list(args.overrides),
               "seconds": {"total": round(time.monotonic() - started), "base_drafts": round(base_s),
                           "train": round(train_s), "eval": round(eval_s)}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print()
    print("Per step (rollouts: the head's score gap and within-question AUROC on the step's own rollouts, before "
          "its update; val: the head in eval mode on the base drafts):")
    for s in sorted(steps):
        print("  " + format_step(s, steps[s]))
    print()
    print(f"Demo test split, first {nq} questions x {k} drafts (accuracy %):")
    print(table)
    print()
    print(f"plot: {plot}; table: {out / 'table.md'}; summary: {out / 'summary.json'}")
    print(f"time: {time.monotonic() - started:.0f} s in all ({base_s:.0f} s base drafts + features, {train_s:.0f} s "
          f"training, {eval_s:.0f} s evaluation)")
    return 0
