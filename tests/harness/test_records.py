import json

import pytest

from metastone.harness.runner import RunConfig, check_or_save_config, draft_seed, my_questions
from metastone.records import DraftRecord, RecordStore, expand_paths, read_jsonl, read_records, record_key
from metastone.sampling import request_seed
from metastone.search import node_seed


def test_append_reload_and_write_once(tmp_path):
    path = tmp_path / "r.jsonl"
    with RecordStore(path) as store:
        store.append({"key": "t/q/0", "x": 1})
        with pytest.raises(ValueError, match="written once"):
            store.append({"key": "t/q/0", "x": 2})
    with RecordStore(path) as store:
        assert "t/q/0" in store and len(store) == 1


def test_partial_last_line_is_cut_before_appending(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"key": "a"}) + "\n" + '{"key": "b", "trunc')
    assert [r["key"] for r in read_records(path)] == ["a"]
    with RecordStore(path) as store:
        assert len(store) == 1
        store.append({"key": "b"})
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()] == ["a", "b"]


def test_corrupt_middle_line_and_duplicates(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"key": "a"}\nnot json\n{"key": "c"}\n')
    with pytest.raises(ValueError, match=r"r.jsonl:2"):
        RecordStore(path)
    path.write_text('{"key": "a", "v": 1}\n{"key": "a", "v": 2}\n')
    assert RecordStore(path).records["a"]["v"] == 1
    path.write_text('{"nokey": 1}\n')
    with pytest.raises(ValueError, match="no 'key'"):
        RecordStore(path)


def test_seeds_sharding_paths(tmp_path):
    assert draft_seed(0, "q1", 3) == draft_seed(0, "q1", 3) != draft_seed(0, "q1", 4)
    assert 0 <= draft_seed(5, "x", 0) < 2**31
    # interleaved, as the original (data[part::total_parts])
    assert my_questions(list(range(10)), 3, 1) == [1, 4, 7]
    assert my_questions(list(range(10)), 3, 0) == [0, 3, 6, 9] and my_questions(list(range(10)), 3, 2) == [2, 5, 8]
    assert sorted(q for p in range(3) for q in my_questions(list(range(10)), 3, p)) == list(range(10))
    assert record_key("aime24", "7", 2) == "aime24/7/2"
    (tmp_path / "a.jsonl").write_text("")
    assert expand_paths([str(tmp_path / "*.jsonl")]) == [tmp_path / "a.jsonl"]
    with pytest.raises(FileNotFoundError, match="matches no file"):
        expand_paths([str(tmp_path / "none*.jsonl")])


def test_config_mismatch_is_refused(tmp_path):
    out = str(tmp_path / "o.jsonl")
    check_or_save_config(RunConfig(task="demo", output_file=out, drafts_per_question=4, model="m", temperature=0.6))
    check_or_save_config(RunConfig(task="demo", output_file=out, drafts_per_question=8, model="m", temperature=0.6, workers=9))
    with pytest.raises(ValueError, match=r"temperature: saved 0.6, now 1.0"):
        check_or_save_config(RunConfig(task="demo", output_file=out, drafts_per_question=4, model="m", temperature=1.0))
    with pytest.raises(ValueError, match="--part"):
        RunConfig(task="demo", output_file=out, drafts_per_question=1, model="m", total_parts=2, part=2)


def test_draft_record_writes_fields_in_file_order(tmp_path):
    bon = DraftRecord("t/q/0", "t", "q", 0, 5, "p", 3, "r", [1], "stop", 0.5, [0.5], [3], answer=1, run_id="x")
    assert list(bon.to_dict()) == ["key", "task", "question_id", "draft", "seed", "prompt", "prompt_len", "response",
                                   "token_ids", "finish_reason", "score", "step_scores", "score_positions", "answer",
                                   "timings", "run_id"]
    searched = DraftRecord("t/q/0", "t", "q", 0, 0, "p", 3, "r", [1], "stop", 0.5, [0.5], [3], strategy="beam", node="1.0",
                           finished=True, depth=2, search={}, candidates=[])
    assert list(searched.to_dict())[13:] == ["answer", "strategy", "node", "finished", "depth", "search", "candidates",
                                             "timings", "run_id"]
    with RecordStore(tmp_path / "r.jsonl") as store:
        store.append(bon)
    assert list(read_records(tmp_path / "r.jsonl")) == [bon.to_dict()]


def test_one_jsonl_reader_skips_only_an_unfinished_last_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n{"b": 2}\n{"c": ')
    assert list(read_jsonl(path)) == [(1, {"a": 1}), (3, {"b": 2})]
    with pytest.raises(ValueError, match=r"x\.jsonl:4: not a JSON object"):
        list(read_jsonl(path, partial_tail=False))  # task data: nothing appends to it, a bad line is an error
    path.write_text('{"a": 1}\n{"c": \n')
    with pytest.raises(ValueError, match=r"x\.jsonl:2: not a JSON object .*; see"):
        list(read_jsonl(path, hint="; see"))  # a finished line that does not parse is corrupt


def test_one_seed_function_for_drafts_and_nodes():
    # the values the harness and search had before they shared request_seed
    assert draft_seed(0, "q1", 3) == request_seed(0, "q1", (3,)) == node_seed(0, "q1", (3,)) == 2123574436
    assert node_seed(7, "q1", (3, 0, 2)) == 2013337119
