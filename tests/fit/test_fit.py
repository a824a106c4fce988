"""``metastone train-sprm`` end to end on a tiny model: planted signal, resume after kill, head formats."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from metastone.eval.demo_task import demo_prompt
from metastone.fit.config import FitConfig
from metastone.fit.pipeline import fit
from metastone.records import record_key

N_QUESTIONS, N_DRAFTS = 40, 4


@pytest.fixture(scope="module")
def fit_model(tmp_path_factory, qwq_tokenizer):
    from metastone.assets.tiny import make_tiny_qwen2

    return make_tiny_qwen2(tmp_path_factory.mktemp("fit_model"), qwq_tokenizer, head_format="ours", seed=3, hidden_size=32)


def planted_run(root: Path, model_dir: Path, tokenizer) -> tuple[Path, Path]:
    """A demo-format question file and pre-sampled drafts where every wrong draft says "Hmm wait"."""
    root.mkdir(parents=True, exist_ok=True)
    data = root / "questions.jsonl"
    rows = [{"id": f"q{i:03d}", "question": f"What is {10 + i} + {20 + 2 * i}?", "answer": 30 + 3 * i} for i in range(N_QUESTIONS)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = root / "out"
    out.mkdir()
    with open(out / "drafts.jsonl", "w") as f:
        for r in rows:
            prompt = demo_prompt(r["question"])
            plen = len(tokenizer.encode(prompt, add_special_tokens=False))
            a, (x, y) = r["answer"], (10 + int(r["id"][1:]), 20 + 2 * int(r["id"][1:]))
            for d in range(N_DRAFTS):
                if d % 2 == 0:
                    text = f" {x} + {y} = {a}. So the sum is {a}. The answer is {a}."
                else:
                    text = f" {x} + {y} = {a + d}. Hmm wait. So the sum is {a + d}. The answer is {a + d}."
                f.write(json.dumps({"key": record_key("demo", r["id"], d), "task": "demo", "question_id": r["id"], "draft": d,
                                    "seed": d, "prompt": prompt, "prompt_len": plen, "response": text,
                                    "token_ids": tokenizer.encode(text, add_special_tokens=False),
                                    "finish_reason": "stop", "score": None}) + "\n")
    return data, out


def fit_config(data: Path, out: Path, model_dir: Path, **kw) -> FitConfig:
    base = dict(model=str(model_dir), task="demo", out=str(out), data=str(data), n_drafts=N_DRAFTS, backend="hf",
                separators=(".",), epochs=25, patience=25, batch_size=16, lr=3e-3, heldout_frac=0.25, shard_questions=8)
    base.update(kw)
    return FitConfig(**base)


@pytest.fixture(scope="module")
def planted(tmp_path_factory, fit_model, qwq_tokenizer):
    data, out = planted_run(tmp_path_factory.mktemp("planted"), fit_model, qwq_tokenizer)
    cfg = fit_config(data, out, fit_model, plot=True)
    report = fit(cfg, progress=False)
    return cfg, out, report


def test_learns_planted_signal(planted):
    cfg, out, report = planted
    assert report["heldout"]["auroc"] > 0.9
    assert report["heldout"]["correct_score"] > report["heldout"]["wrong_score"] + 0.2
    assert report["heldout"][f"bon@{N_DRAFTS}"] > 0.9  # half the drafts are right: picking by score finds them
    assert (out / "fit_curves.png").stat().st_size > 1000
    history = [json.loads(line) for line in (out / "fit_log.jsonl").read_text().splitlines()]
    assert len(history) == report["epochs_run"] and history[0]["epoch"] == 0


def test_both_head_formats_load_and_match_training_scores(planted, qwq_tokenizer):
    from metastone.fit.pipeline import load_items
    from metastone.fit.trainer import trajectory_scores
    from metastone.serve.hf.scorer import HFScorer
    from metastone.sprm import load_head

    cfg, out, _ = planted
    ours, ours_cfg = load_head(out / "sprm_head.safetensors")
    released, _ = load_head(out / "score_module.pt", config=ours_cfg)
    for k, v in ours.state_dict().items():
        assert torch.equal(v, released.state_dict()[k])
    assert ours_cfg.separators == (".",) and ours_cfg.think_tokens is None and ours_cfg.hidden_size == 32
    # the output folder is a ready model folder: the serving scorer reproduces the training-time scores
    labels = {json.loads(line)["key"]: json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()}
    _, held = load_items(cfg, labels, out)
    expected = trajectory_scores(ours, held[:6], 32, "geomean")
    records = {json.loads(line)["key"]: json.loads(line) for line in (out / "drafts.jsonl").read_text().splitlines()}
    scorer = HFScorer(out)
    got = scorer.score_ids([qwq_tokenizer.encode(records[it.key]["prompt"]) + records[it.key]["token_ids"] for it in held[:6]],
                           [records[it.key]["prompt_len"] for it in held[:6]])
    assert [g.value for g in got] == pytest.approx(expected, abs=1e-4)


def test_resume_after_kill_gives_the_same_head(tmp_path, planted, fit_model, qwq_tokenizer):
    """SIGKILL during feature extraction and again during training; the rerun finishes with the same head."""
    from metastone.sprm import load_head

    cfg, ref_out, _ = planted
    data, out = planted_run(tmp_path, fit_model, qwq_tokenizer)
    cmd = [sys.executable, "-c", "import sys; from metastone.cli import main; sys.exit(main())", "train-sprm", "--model", str(fit_model), "--task", "demo", "--data",
           str(data), "--out", str(out), "--n-drafts", str(N_DRAFTS), "--backend", "hf", "--separators", ".",
           "--epochs", "25", "--patience", "25", "--batch-size", "16", "--lr", "3e-3", "--heldout-frac", "0.25",
           "--plot", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    # the CLI's default shard size differs; the head must not depend on it
    killed = []
    for wait_for in ("features", "train_state.pt"):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 240
        while not (out / wait_for).exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        killed.append(proc.wait() == -signal.SIGKILL)
    assert killed[-1], "the run finished before it could be killed during training"
    assert not (out / "sprm_head.safetensors").exists()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    a, _ = load_head(out / "sprm_head.safetensors")
    b, _ = load_head(ref_out / "sprm_head.safetensors")
    for k, v in a.state_dict().items():
        torch.testing.assert_close(v, b.state_dict()[k], rtol=1e-5, atol=1e-6)
    history = [json.loads(line) for line in (out / "fit_log.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == list(range(len(history)))


def test_refuses_resume_with_other_data_options(planted, fit_model):
    cfg, out, _ = planted
    with pytest.raises(ValueError, match="n_drafts"):
        fit(fit_config(Path(cfg.data), out, fit_model, n_drafts=2), progress=False)


def test_samples_with_hf_backend(tmp_path, fit_model):
    """Stage 1 for real: the harness samples the drafts (tiny random model, a few tokens)."""
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"id": f"s{i}", "question": f"What is {i} + 1?", "answer": i + 1}) + "\n" for i in range(8)))
    cfg = fit_config(data, tmp_path / "out", fit_model, n_drafts=2, max_tokens=6, epochs=1, heldout_frac=0.5)
    report = fit(cfg, progress=False)
    records = [json.loads(line) for line in (tmp_path / "out" / "drafts.jsonl").read_text().splitlines()]
    assert sorted(r["key"] for r in records) == sorted(record_key("demo", f"s{i}", d) for i in range(8) for d in range(2))
    assert all(0 < len(r["token_ids"]) <= 6 for r in records)
    assert report["train_drafts"] + report["heldout_drafts"] == 16


def test_config_errors_name_the_option(tmp_path):
    with pytest.raises(ValueError, match="--n-drafts"):
        FitConfig(model="m", task="demo", out=str(tmp_path), n_drafts=1)
    with pytest.raises(ValueError, match="--heldout-frac"):
        FitConfig(model="m", task="demo", out=str(tmp_path), heldout_frac=1.0)
    # head options: validated up front by SPRMConfig (the one check), named as train-sprm's flags
    for option, value in (("feature_layer", -1), ("separators", ()), ("think_tokens", ("<think>",)),
                          ("aggregation", "median"), ("dropout", 1.0)):
        with pytest.raises(ValueError, match=f"train-sprm: --{option.replace('_', '-')}=.* is invalid: expected"):
            FitConfig(model="m", task="demo", out=str(tmp_path), **{option: value})
    cfg = FitConfig(model="m", task="demo", out=str(tmp_path), separators=[".\n\n"], think_tokens=["<a>", "</a>"])
    assert (cfg.separators, cfg.think_tokens) == ((".\n\n",), ("<a>", "</a>"))
    assert cfg.head_config(8).to_dict()["think_tokens"] == ["<a>", "</a>"]
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="--data with training questions"):
        fit(FitConfig(model=str(tmp_path), task="aime24", out=str(tmp_path / "o")), progress=False)


def test_invalid_outcome_negative_trains_invalid_drafts_as_wrong(tmp_path):
    from dataclasses import replace

    from metastone.fit.trainer import Item, train_head
    from metastone.sprm.loss import OUTCOME_INVALID

    gen = torch.Generator().manual_seed(0)

    def item(i, outcome, correct):
        return Item(f"k{i}", f"q{i // 4}", torch.randn(3, 8, generator=gen), outcome, correct)

    items = [item(i, [1.0, 0.0, OUTCOME_INVALID, 0.0][i % 4], i % 4 == 0) for i in range(16)]
    # raw features: the standardization statistics are taken over every train draft, invalid ones included
    base = FitConfig(model="m", task="demo", out=str(tmp_path), n_drafts=4, epochs=2, patience=5, batch_size=6,
                     standardize=False)

    def first_losses(train, cfg, name):
        _, history, _ = train_head(train, items[:4], 8, cfg, tmp_path / f"{name}.pt")
        return [h["train_loss"] for h in history]

    assert base.invalid_outcome == "negative"
    as_wrong = [Item(it.key, it.question_id, it.features, 0.0 if it.outcome == OUTCOME_INVALID else it.outcome,
                     it.correct) for it in items]
    valid_only = [it for it in items if it.outcome != OUTCOME_INVALID]
    negative = first_losses(items, base, "negative")
    assert negative == first_losses(as_wrong, base, "as_wrong")
    exclude = first_losses(items, replace(base, invalid_outcome="exclude"), "exclude")
    assert exclude == first_losses(valid_only, base, "valid_only")
    assert negative != exclude
    with pytest.raises(ValueError, match="--invalid-outcome"):
        replace(base, invalid_outcome="drop")
