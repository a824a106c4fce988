"""SIGKILL a training run while it writes a checkpoint, N times; every next start must resume from a complete one.

    .venv-train/bin/python benchmarks/kill_during_save.py --trials 10 --seed 0 --out outputs/kill_during_save

The CPU loop (``preset=cpu_tiny``, the tiny reasoner, one-digit sums; docs/train.md "CPU runs") on one
folder. Each trial starts ``python -m metastone.train`` with one step more than the folder's resume
point, waits until the step's checkpoint folder appears (verl's save has begun; it takes ~0.8 s here),
sleeps a random 0-``--max-delay`` s (seeded) and SIGKILLs the run: its process group and every Ray
process it started, at once. The next trial's start is the check of the previous kill: it must
resume from the step the tracker names after the kill, that step's folder must be complete (``data.pt``
and the head files), and the SPRM head state it restores (head + AdamW + schedule digest) must equal
the one logged when that step was saved. A last run resumes and finishes one step. Prints one row per trial and writes ``results.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

PYTHON = Path(sys.executable)
SAVED = re.compile(r"SPRM head state saved to (\S+)/global_step_(\d+)/actor \(digest (\w+)\)")
RESTORED = re.compile(r"SPRM head state restored from (\S+)/global_step_(\d+)/actor \(digest (\w+)\)")
RESUMED = re.compile(r"Resuming from \S*global_step_(\d+)")


def prepare(out: Path) -> dict:
    from metastone.assets.qwen_tokenizer import build_qwen_tokenizer
    from metastone.assets.tiny import make_tiny_reasoner, reasoner_problems

    model = out / "model"
    if not (model / "config.json").is_file():
        make_tiny_reasoner(model, build_qwen_tokenizer("qwq"))
    problems = out / "problems.jsonl"
    problems.write_text("".join(json.dumps(r) + "\n" for r in reasoner_problems(64, seed=1)))
    subprocess.run([PYTHON, "-m", "metastone.data.prepare", "--input", problems, "--output", out / "train.parquet",
                    "--val-output", out / "val.parquet", "--val-size", "8"], check=True, capture_output=True)
    return {"model": model, "train": out / "train.parquet", "val": out / "val.parquet", "ckpt": out / "ckpt"}


def tracker(ckpt: Path) -> int:
    path = ckpt / "latest_checkpointed_iteration.txt"
    return int(path.read_text().strip()) if path.is_file() and path.read_text().strip().isdigit() else 0


def start(files: dict, steps: int, log: Path) -> subprocess.Popen:
    cmd = [PYTHON, "-m", "metastone.train", "preset=cpu_tiny", f"actor_rollout_ref.model.path={files['model']}",
           f"data.train_files={files['train']}", f"data.val_files={files['val']}",
           f"trainer.default_local_dir={files['ckpt']}", f"trainer.total_training_steps={steps}"]
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def written_since(folder: Path, t: float) -> bool:
    """Has a file in ``folder`` been written after ``t`` (wall clock)?"""
    try:
        return any(f.stat().st_mtime > t for f in folder.iterdir())
    except OSError:  # not there yet, or a file replaced while we looked
        return False


def ray_processes() -> set[int]:
    import psutil

    return {p.pid for p in psutil.process_iter(["name"])
            if (p.info["name"] or "").startswith(("ray::", "raylet", "gcs_server"))}


def kill_run(proc: subprocess.Popen, before: set[int]) -> None:
    """SIGKILL the driver's process group and, in the same instant, every Ray process the run started.

    Ray's actors run in their own process groups and outlive the driver for a moment (long enough to
    finish a save), and its agents outlive it for good: a crash of the whole run is all of them at once.
    """
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in ray_processes() - before:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=60)


def check_resume(log_text: str, expected: int, saved: dict[int, set[str]], ckpt: Path) -> dict:
    """Did this start resume from ``expected`` with the head state saved there?"""
    resumed = RESUMED.search(log_text)
    restored = {m.group(3) for m in RESTORED.finditer(log_text) if int(m.group(2)) == expected}
    complete = expected == 0 or all((ckpt / f"global_step_{expected}" / f).is_file()
                                    for f in ("data.pt", "actor/sprm_head.safetensors", "actor/sprm_train_state.pt"))
    ok = (complete and (int(resumed.group(1)) if resumed else 0) == expected
          and (expected == 0 or (restored and restored <= saved.get(expected, set()))))
    return {"resumed_from": int(resumed.group(1)) if resumed else 0, "complete": complete,
            "digest_match": bool(expected == 0 or (restored and restored <= saved.get(expected, set()))), "ok": bool(ok)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-delay", type=float, default=0.8, help="kill 0..this many s after the save began")
    ap.add_argument("--out", type=Path, default=Path("outputs/kill_during_save"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    files = prepare(args.out)
    rng = random.Random(args.seed)
    saved: dict[int, set[str]] = {}
    rows, expected = [], tracker(files["ckpt"])
    for trial in range(args.trials + 1):
        last = trial == args.trials
        target = tracker(files["ckpt"]) + 1
        log = args.out / f"run{trial}.log"
        t0 = time.monotonic()
        before = ray_processes()
        started = time.time()
        proc = start(files, target, log)
        row = {"trial": trial}
        if last:
            row["rc"] = proc.wait(timeout=1800)
        else:
            folder = files["ckpt"] / f"global_step_{target}"
            # a torn folder of this step may be there from an earlier kill: wait for this run's save
            while not written_since(folder / "actor", started):
                if proc.poll() is not None:
                    raise SystemExit(f"run {trial} ended ({proc.returncode}) before its save; see {log}")
                time.sleep(0.02)
            row["delay_s"] = round(rng.uniform(0, args.max_delay), 3)
            time.sleep(row["delay_s"])
            kill_run(proc, before)
            time.sleep(1)
            row["tracker_at_kill"] = tracker(files["ckpt"])
            row["saved_step_complete_at_kill"] = (folder / "data.pt").is_file()
        text = log.read_text()
        row.update(check_resume(text, expected, saved, files["ckpt"]))
        row["expected_resume"] = expected
        row["wall_s"] = round(time.monotonic() - t0, 1)
        for m in SAVED.finditer(text):
            saved.setdefault(int(m.group(2)), set()).add(m.group(3))
        expected = tracker(files["ckpt"])
        rows.append(row)
        print(json.dumps(row), flush=True)
    kills = [r for r in rows if "delay_s" in r]
    resumes = rows[1:]
    summary = {"trials": len(kills), "seed": args.seed, "max_delay_s": args.max_delay,
               "killed_before_the_save_completed": sum(not r["saved_step_complete_at_kill"] for r in kills),
               "resumed_from_a_complete_checkpoint": sum(r["ok"] for r in resumes), "of": len(resumes),
               "final_run_rc": rows[-1].get("rc"), "rows": rows}
    (args.out / "results.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}))
    if summary["resumed_from_a_complete_checkpoint"] != len(resumes) or rows[-1].get("rc") != 0:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
