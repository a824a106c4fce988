"""Hand-computed step positions. Toy ids: separator 5, <think> 1, </think> 2."""

import pytest
import torch

from metastone.sprm import SPRMConfig, StepSpec, resolve_step_spec, step_mask, step_positions
from metastone.sprm.steps import is_zh_separator_text, zh_separator_ids

SPEC = StepSpec(separator_ids=(5,), think_start_id=1, think_end_id=2)


@pytest.mark.parametrize(
    "ids,prompt_len,expected",
    [
        # think span 1..9: separators at 3 (read 2), 5 (read 4), 6 (run: skipped), 8 (read 7); 10 is after </think>
        ([9, 1, 7, 5, 8, 5, 5, 3, 5, 2, 5, 4], 0, [2, 4, 7]),
        # a separator right after <think> is skipped
        ([1, 5, 7, 5, 2], 0, [2]),
        # no </think> (truncated): the span runs to the end
        ([1, 7, 5, 8, 5], 0, [1, 3]),
        # no think tokens at all: the whole response
        ([7, 5, 8, 5], 0, [0, 2]),
        # ... and prompt tokens are never scored
        ([7, 5, 8, 5], 2, [2]),
        # </think> without <think>: from the start up to the last </think>
        ([7, 5, 2, 8, 5], 0, [0]),
        # several think blocks: first <think> to last </think>
        ([1, 7, 5, 2, 1, 8, 5, 2, 9, 5], 0, [1, 5]),
        # <think> in the prompt (chat templates end the prompt with it)
        ([3, 1, 7, 5, 8, 5, 2], 2, [2, 4]),
        # a separator inside the prompt (and inside the span) never counts
        ([1, 7, 5, 9, 8, 5], 4, [4]),
        # a separator as the first response token would be read at a prompt token: dropped
        ([1, 7, 5, 8, 5], 2, [3]),
        # nothing to score
        ([], 0, []),
        ([1, 2], 0, []),
    ],
)
def test_positions_hand_computed(ids, prompt_len, expected):
    assert step_positions(ids, prompt_len, SPEC) == expected


def test_several_separator_ids_share_runs():
    spec = StepSpec(separator_ids=(5, 6))
    assert step_positions([7, 5, 6, 8, 6], 0, spec) == [0, 3]


def test_model_without_think_tokens():
    spec = StepSpec(separator_ids=(5,))
    assert step_positions([1, 5, 7, 5, 2, 8, 5], 0, spec) == [0, 2, 5]


def test_padding_left_and_right_and_batch_equals_rows():
    # pad id 5 is also the separator id: padding must never count as one.
    rows = [([7, 5, 8, 5], 0), ([1, 7, 5, 8, 5, 2, 5], 1), ([3, 7, 5], 1)]
    width = 9
    for side in ("left", "right"):
        ids = torch.full((len(rows), width), 5)
        attn = torch.zeros_like(ids)
        resp = torch.zeros_like(ids, dtype=torch.bool)
        offsets = []
        for r, (seq, plen) in enumerate(rows):
            off = width - len(seq) if side == "left" else 0
            offsets.append(off)
            ids[r, off : off + len(seq)] = torch.tensor(seq)
            attn[r, off : off + len(seq)] = 1
            resp[r, off + plen : off + len(seq)] = True
        mask = step_mask(ids, resp, SPEC, attention_mask=attn)
        for r, (seq, plen) in enumerate(rows):
            got = [p - offsets[r] for p in mask[r].nonzero().flatten().tolist()]
            assert got == step_positions(seq, plen, SPEC), (side, r)


def test_left_padding_then_separator_first_real_token():
    ids = torch.tensor([[5, 5, 5, 7, 5]])
    attn = torch.tensor([[0, 0, 1, 1, 1]])
    resp = attn.bool()
    # the first real token is a separator whose "previous" token is padding: nothing to read, not scored;
    # the separator at 4 is read at 3.
    assert step_mask(ids, resp, StepSpec((5,)), attention_mask=attn)[0].nonzero().flatten().tolist() == [3]


def test_spec_validation():
    with pytest.raises(ValueError, match="empty"):
        StepSpec(separator_ids=())
    with pytest.raises(ValueError, match="also a separator"):
        StepSpec(separator_ids=(5,), think_start_id=5)
    with pytest.raises(ValueError, match="prompt_len"):
        step_positions([1, 2], 3, SPEC)
    with pytest.raises(ValueError, match="same shape"):
        step_mask(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.bool), SPEC)


def test_real_qwen_tokenizers_single_tokens(qwq_tokenizer, r1_tokenizer):
    qwq = resolve_step_spec(qwq_tokenizer)
    r1 = resolve_step_spec(r1_tokenizer)
    assert qwq == StepSpec(separator_ids=(382,), think_start_id=151667, think_end_id=151668)
    assert r1 == StepSpec(separator_ids=(382,), think_start_id=151648, think_end_id=151649)
    plain = resolve_step_spec(qwq_tokenizer, separators=("\n", "。"))
    assert plain.separator_ids == (198, 1773)
    with pytest.raises(ValueError, match="single token"):
        resolve_step_spec(qwq_tokenizer, separators=("Hello world",))


def test_real_trace_reads_token_before_each_separator(qwq_tokenizer):
    prompt = "<|im_start|>user\nWhat is 2+2? Answer.\n\n<|im_end|>\n<|im_start|>assistant\n<think>\n"
    response = "First, add.\n\nThen check.\n\nDone.\n\n</think>\nThe answer is 4.\n\n"
    p_ids = qwq_tokenizer.encode(prompt, add_special_tokens=False)
    r_ids = qwq_tokenizer.encode(response, add_special_tokens=False)
    ids = p_ids + r_ids
    got = step_positions(ids, len(p_ids), resolve_step_spec(qwq_tokenizer))
    # Independent walk: inside the think span, the first '.\n\n' of each run, after the prompt.
    expected, inside = [], False
    for i, t in enumerate(ids):
        piece = qwq_tokenizer.decode([t])
        if piece == "<think>":
            inside = True
        elif piece == "</think>":
            inside = False
        elif inside and piece == ".\n\n" and i > len(p_ids) and qwq_tokenizer.decode([ids[i - 1]]) != ".\n\n":
            expected.append(i - 1)
    assert got == expected and len(got) == 3
    assert [qwq_tokenizer.decode([ids[p]]) for p in got] == [" add", " check", "Done"]
    # A longer newline run is another single token, as in the released vocabulary: it ends no step.
    longer = qwq_tokenizer.encode(".\n\n\n\n", add_special_tokens=False)
    assert len(longer) == 1 and longer != [382]


def test_zh_rule_on_decoded_text():
    # The original score server's zh rule: <= 3 characters, holds "\n" or "。", <= 1 other character.
    for text in ("\n", "\n\n", "\n\n\n", ".\n\n", "。", "。\n", "。\n\n", "，\n", "。”", "。。。", "\n \n"):
        assert is_zh_separator_text(text), text
    for text in ("\n\n\n\n", "。”\n\n", "ab\n", "。“”", "a", "", ".", "\n。x"):
        assert not is_zh_separator_text(text), text


def test_zh_separator_set_from_real_tokenizer(r1_tokenizer, qwq_tokenizer):
    ids = zh_separator_ids(r1_tokenizer)
    assert zh_separator_ids(r1_tokenizer) is ids  # cached per tokenizer
    # Hand-checked members: "\n" 198, "\n\n" 271, ".\n\n" 382, "。" 1773, "。\n\n" 3407, "。\n" 8997,
    # "，\n" 41453, "：\n\n" 48443; non-members: "\n\n\n\n", "。”\n\n" 78900.
    for i in (198, 271, 382, 1773, 3407, 8997, 41453, 48443):
        assert i in ids, (i, r1_tokenizer.decode([i]))
    assert r1_tokenizer.encode("\n\n\n\n", add_special_tokens=False)[0] not in ids
    assert 78900 not in ids and 151648 not in ids and 151649 not in ids
    # "about a hundred" tokens; the added tokens differ between flavours, the BPE ranks do not.
    assert len(ids) == 116 and zh_separator_ids(qwq_tokenizer) == ids
    zh = resolve_step_spec(r1_tokenizer, SPRMConfig.for_lang(8, "zh").separators)
    assert zh.separator_ids == ids and (zh.think_start_id, zh.think_end_id) == (151648, 151649)


def test_zh_trace_positions_by_hand(r1_tokenizer):
    prompt = "<｜User｜>选哪个？<｜Assistant｜>"
    response = "<think>\n先算一下。\n\n好像不对，\n重新算：\n\n他说“选C。”\n\n所以选C。\n\n</think>\n答案：C。\n\n"
    p_ids = r1_tokenizer.encode(prompt, add_special_tokens=False)
    ids = p_ids + r1_tokenizer.encode(response, add_special_tokens=False)
    pieces = [r1_tokenizer.decode([t]) for t in ids]
    assert pieces[5:27] == [
        "<think>", "\n", "先", "算", "一下", "。\n\n", "好像", "不对", "，\n", "重新", "算", "：\n\n",
        "他说", "“", "选", "C", "。”\n\n", "所以", "选", "C", "。\n\n", "</think>",
    ]
    # By hand: 6 "\n" follows <think> (skipped); 10, 13, 16 and 25 end steps -> read at 9, 12, 15, 24;
    # 21 "。”\n\n" has 4 characters (no step); 31 "。\n\n" lies after </think>.
    zh = resolve_step_spec(r1_tokenizer, SPRMConfig.for_lang(8, "zh").separators)
    assert step_positions(ids, len(p_ids), zh) == [9, 12, 15, 24]
    # The English separator finds no step in this trace, and neither do the single tokens "\n" and "。".
    assert step_positions(ids, len(p_ids), resolve_step_spec(r1_tokenizer)) == []
    plain = resolve_step_spec(r1_tokenizer, ("\n", "。"))
    assert step_positions(ids, len(p_ids), plain) == []
