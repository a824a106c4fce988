"""``--lang zh`` and ``"separators": ["@zh"]`` reach every scorer path through ``resolve_step_spec``.

The HF scorer (``metastone score --lang zh``, the HF score server), the search step spec read from a
head's ``sprm_config.json``, and ``sprm_config.json`` itself all get the original score server's zh
token set (``metastone.sprm.steps.zh_separator_ids``). The vLLM scorer resolves its spec with the same
call (covered by tests/serve/test_vllm.py, behind the vllm marker).
"""

import shutil

from metastone.sprm import SPRMConfig, load_head, save_head
from metastone.sprm.steps import zh_separator_ids

PROMPT = "<|im_start|>user\n选哪个？<|im_end|>\n<|im_start|>assistant\n<think>\n"
RESPONSE = "先算一下。\n\n好像不对，\n重新算：\n\n所以选C。\n\n</think>\n答案：C"


def test_hf_scorer_lang_zh_scores_a_chinese_trace(tiny_model_dir, qwq_tokenizer):
    from metastone.serve.hf.scorer import HFScorer

    scorer = HFScorer(tiny_model_dir, lang="zh")
    assert scorer.spec.separator_ids == zh_separator_ids(qwq_tokenizer)
    out = scorer.score_text(RESPONSE, prompt=PROMPT)
    ids = out["token_ids"]
    # by hand: the tokens before "。\n\n", "，\n", "：\n\n" and "。\n\n" (the one before </think>)
    assert [qwq_tokenizer.decode([ids[p + 1]]) for p in out["score_positions"]] == ["。\n\n", "，\n", "：\n\n", "。\n\n"]
    assert [qwq_tokenizer.decode([ids[p]]) for p in out["score_positions"]] == ["一下", "不对", "算", "C"]
    assert 0 < out["value"] < 1
    # the English default finds no step here: every draft would score 0
    assert HFScorer(tiny_model_dir).score_text(RESPONSE, prompt=PROMPT)["score_positions"] == []


def test_head_config_with_zh_rule_drives_search_and_scorer(tiny_model_dir, qwq_tokenizer, tmp_path):
    from metastone.search import step_spec_for
    from metastone.serve.hf.scorer import HFScorer

    folder = tmp_path / "zh_model"
    shutil.copytree(tiny_model_dir, folder)
    head, _ = load_head(folder)
    save_head(head, folder, SPRMConfig.for_lang(head.hidden_size, "zh"))  # ours is read before score_module.pt
    assert SPRMConfig.load(folder / "sprm_config.json").separators == ("@zh",)
    spec = step_spec_for(qwq_tokenizer, folder)
    assert spec.separator_ids == zh_separator_ids(qwq_tokenizer)
    out = HFScorer(folder).score_text(RESPONSE, prompt=PROMPT)
    assert len(out["score_positions"]) == 4 and out["value"] > 0
