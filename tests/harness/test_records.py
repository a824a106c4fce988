import json

import pytest

from metastone.harness.records import RecordStore, expand_paths, read_records, record_key
from metastone.harness.runner import RunConfig, check_or_save_config, draft_seed, my_questions


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
