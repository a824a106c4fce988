"""The metrics pass on hand-made result files with known answers (no models)."""

import argparse
import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from metastone.cli import SUBCOMMANDS
from metastone.cli import metric as metric_cli
from metastone.eval.tasks import load_task
from metastone.metrics.compute import parse_ns
from metastone.metrics.format import format_report
from metastone.metrics.report import evaluate

ROOT = Path(__file__).resolve().parents[2]
DEMO_IDS = ["demo-test-00000", "demo-test-00001", "demo-test-00002"]  # answers 2, 2, 13


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def record(qid, draft, response, score, task="demo", **extra):
    return {"key": f"{task}/{qid}/{draft}", "task": task, "question_id": qid, "draft": draft,
            "response": response, "score": score, **extra}


def demo_records():
    """Q0: K=4 with a score tie (0.9, 0.9) between a right and a wrong draft; Q1: K=2 (mixed sizes); Q2: K=4."""
    q0, q1, q2 = DEMO_IDS
    return [
        record(q0, 0, " 1 + 1 = 2. The answer is 2.", 0.9, step_scores=[0.8, 0.9]),
        record(q0, 1, " The answer is 3.", 0.9, step_scores=[0.9]),
        record(q0, 2, " The answer is 3.", 0.2, step_scores=[0.1, 0.3]),
        record(q0, 3, " I do not know.", 0.5),
        record(q1, 0, " The answer is 5.", 0.8),
        record(q1, 1, " The answer is 2.", 0.3),
        record(q2, 3, " The answer is 13.", 0.3),  # out of order on purpose: drafts are sorted by index
        record(q2, 0, " The answer is 13.", 0.1),
        record(q2, 1, "<think>The answer is 7.</think> The answer is 13.", 0.2),
        record(q2, 2, " The answer is 7.", 0.5),
    ]


def run_cli(argv):
    parser = argparse.ArgumentParser()
    metric_cli.make_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["metric", *argv])
    return args.func(args)


def means(report, n):
    row = next(r for r in report["rows"] if r["N"] == n)
    return {rule: m["mean"] for rule, m in row["metrics"].items()}, row


def brute_vote(correct, answers, weights, n):
    """Expected vote@n over all n-subsets, written independently of selection.vote."""
    subsets = list(itertools.combinations(range(len(correct)), n))
    total = 0
    for s in subsets:
        tally = {}
        for i in s:
            if answers[i] is not None:
                w, first = tally.get(answers[i], (0.0, i))
                tally[answers[i]] = (w + (weights[i] if weights else 1.0), first)
        if tally:
            best = max(tally.values(), key=lambda t: (t[0], -t[1]))
            total += correct[best[1]]
    return total / len(subsets)


@pytest.fixture(scope="module")
def demo_task():
    with load_task("demo") as task:
        yield task


def test_demo_hand_computed_values_ties_and_mixed_group_sizes(tmp_path, demo_task):
    path = write_jsonl(tmp_path / "demo.jsonl", demo_records())
    report, questions = evaluate(demo_task, [str(path)], bootstrap=200)
    assert report["N"] == [2, 4]  # default 2,8,32 clipped to the 4 drafts of the largest question
    assert report["questions"] == 3 and report["drafts"] == 10 and report["drafts_per_question"] == {"2": 1, "4": 2}
    assert [q.id for q in questions] == DEMO_IDS
    assert questions[2].correct == [True, True, False, True]  # sorted by draft; thinking ignored in draft 1
    assert questions[0].answers == ["2", "3", "3", None]

    m4, row4 = means(report, 4)
    assert row4["short"] == 1 and means(report, 2)[1]["short"] == 0
    # Q0: tie 0.9/0.9 -> lower index (right); Q1 (K=2, short: n=2) top 0.8 wrong; Q2 top 0.5 wrong
    assert m4["sprm_bon"] == pytest.approx(1 / 3) and m4["sprm_bon_groups"] == pytest.approx(1 / 3)
    assert m4["pass@1"] == pytest.approx((1 / 4 + 1 / 2 + 3 / 4) / 3)
    assert m4["pass@n"] == pytest.approx(1.0)
    # maj: Q0 "3" twice (wrong), Q1 tie 5 vs 2 -> first seen 5 (wrong), Q2 "13" x3 (right)
    assert m4["maj_groups"] == m4["maj_sampled"] == pytest.approx(1 / 3)
    # weighted: Q0 "3" 1.1 > "2" 0.9 (wrong); Q1 5 (0.8) wins; Q2 "13" 0.6 > "7" 0.5 (right)
    assert m4["vote_groups"] == m4["vote_sampled"] == pytest.approx(1 / 3)

    m2, _ = means(report, 2)
    assert m2["sprm_bon"] == pytest.approx((3 / 6 + 0 + 3 / 6) / 3)
    assert m2["sprm_bon_groups"] == pytest.approx((1 / 2 + 0 + 1 / 2) / 3)  # Q0 {0,1} tie -> draft 0 right
    assert m2["pass@n"] == pytest.approx((1 / 2 + 1 + 1) / 3)
    assert m2["maj_groups"] == pytest.approx((1 / 2 + 0 + 1 / 2) / 3)
    assert m2["vote_groups"] == pytest.approx((1 / 2 + 0 + 1 / 2) / 3)
    expected_maj = sum(brute_vote(q.correct, q.answers, None, min(2, q.k)) for q in questions) / 3
    expected_vote = sum(brute_vote(q.correct, q.answers, q.scores, min(2, q.k)) for q in questions) / 3
    assert m2["maj_sampled"] == pytest.approx(expected_maj, abs=0.06)
    assert m2["vote_sampled"] == pytest.approx(expected_vote, abs=0.06)

    for row in report["rows"]:
        for m in row["metrics"].values():
            assert m["ci"][0] <= m["mean"] + 1e-12 and m["mean"] <= m["ci"][1] + 1e-12
    table = format_report(report)
    assert "N=2 (low)" in table and "SPRM Best-of-N (exact)" in table and "questions with K < N" in table


def test_explicit_n_list_and_bad_n():
    assert parse_ns("2,8,32", 32) == [2, 8, 32] and parse_ns("8,2,2", 8) == [2, 8]
    assert parse_ns(None, 16) == [2, 8, 16] and parse_ns(None, 1) == [1]
    with pytest.raises(ValueError, match=r"--N 32 is more than the most drafts .*\(16\)"):
        parse_ns("2,32", 16)
    with pytest.raises(ValueError, match="comma-separated positive integers"):
        parse_ns("low", 8)
    with pytest.raises(ValueError, match="comma-separated positive integers"):
        parse_ns("0", 8)


def test_duplicates_across_files_first_kept_conflicts_rejected(tmp_path, demo_task):
    rows = demo_records()
    a = write_jsonl(tmp_path / "a.jsonl", rows[:6])
    b = write_jsonl(tmp_path / "b.jsonl", rows[4:])  # rows 4 and 5 (question 1) in both files
    report, _ = evaluate(demo_task, [str(tmp_path / "*.jsonl")], "2,4", bootstrap=0)
    whole, _ = evaluate(demo_task, [str(write_jsonl(tmp_path / "all.json", rows))], "2,4", bootstrap=0)
    assert report["duplicates"] == 2 and report["drafts"] == 10
    assert [r["metrics"] for r in report["rows"]] == [r["metrics"] for r in whole["rows"]]
    assert "2 duplicate(s) ignored" in format_report(report)

    conflict = dict(rows[4], response=" The answer is 2.")
    write_jsonl(b, [conflict] + rows[5:])
    with pytest.raises(ValueError, match=r"b\.jsonl:1: draft 0 of question demo-test-00001 is also at .*a\.jsonl:5"):
        evaluate(demo_task, [f"{a},{b}"], bootstrap=0)


def test_bad_input_names_file_line_and_form(tmp_path, demo_task):
    rows = demo_records()
    bad = write_jsonl(tmp_path / "bad.jsonl", rows[:2] + [{k: v for k, v in rows[2].items() if k != "score"}])
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: draft record has no 'score'.*Expected form"):
        evaluate(demo_task, [str(bad)])
    other = write_jsonl(tmp_path / "other.jsonl", [dict(rows[0], task="aime24")])
    with pytest.raises(ValueError, match=r"other\.jsonl:1: a record of task 'aime24'; expected --task demo"):
        evaluate(demo_task, [str(other)])
    nan = write_jsonl(tmp_path / "nan.jsonl", [dict(rows[0], score=None)])
    with pytest.raises(ValueError, match=r"nan\.jsonl:1: 'score' is None; expected a finite number"):
        evaluate(demo_task, [str(nan)])
    neither = write_jsonl(tmp_path / "neither.jsonl", [{"hello": 1}])
    with pytest.raises(ValueError, match=r"neither\.jsonl:1: neither a draft record"):
        evaluate(demo_task, [str(neither)])
    wrong_gold = write_jsonl(tmp_path / "gold.jsonl", [dict(rows[0], answer=3)])
    with pytest.raises(ValueError, match=r"gold\.jsonl:1: answer 3 but the demo data .* has 2 for question demo-test-00000"):
        evaluate(demo_task, [str(wrong_gold)])
    unknown = write_jsonl(tmp_path / "unknown.jsonl", [dict(rows[0], question_id="nope")])
    with pytest.raises(ValueError, match=r"unknown\.jsonl:1: question nope is not in the demo data .*--input_file"):
        evaluate(demo_task, [str(unknown)])
    original = write_jsonl(tmp_path / "orig.jsonl", [{"prompt": "q", "answer": 1, "output": {"solution_lst": ["a"], "score_lst": []}}])
    with pytest.raises(ValueError, match=r"orig\.jsonl:1: output\.solution_lst has 1 entries but output\.score_lst 0"):
        evaluate(demo_task, [str(original)])
    good = write_jsonl(tmp_path / "good.jsonl", rows[:1])
    with pytest.raises(ValueError, match=r"orig\.jsonl:1: original format, but .*good\.jsonl:1 is in the other format"):
        evaluate(demo_task, [str(good), str(original)])
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text("{not json}\n" + json.dumps(rows[0]) + "\n")
    with pytest.raises(ValueError, match=r"garbage\.jsonl:1: not a JSON object"):
        evaluate(demo_task, [str(garbage)])
    with pytest.raises(FileNotFoundError, match="matches no file"):
        evaluate(demo_task, [str(tmp_path / "none*.jsonl")])
    with pytest.raises(ValueError, match="unknown task 'aime26'"):
        run_cli(["--task", "aime26", "--result_paths", str(bad)])


def test_partial_last_line_and_unmatched_question_graded_against_file_answer(tmp_path, demo_task, caplog):
    rows = demo_records()[:4] + [record("extra-1", 0, " The answer is 41.", 0.7, answer=41)]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"key": "demo/demo-test-00000/9", "tas')
    report, questions = evaluate(demo_task, [str(path)], "2", bootstrap=0)
    assert [q.id for q in questions] == ["demo-test-00000", "extra-1"] and questions[1].correct == [True]
    assert report["not_in_task_data"] == 1 and report["drafts"] == 5
    assert "partial last line" in caplog.text and "extra-1 is not in the demo data" in caplog.text


def aime_line(prompt, answer, responses, scores, **extra):
    """One line of the original test/inference.py output: the solutions carry the templated prompt."""
    content = f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
    return {"prompt": prompt, "answer": answer, **extra,
            "output": {"content": content, "time": 1.0, "solution_lst": [content + r for r in responses], "score_lst": scores}}


def test_original_format_aime24_math_answers(tmp_path):
    rows = [json.loads(line) for line in (ROOT / "data" / "aime24.jsonl").read_text().splitlines()]
    lines = [
        aime_line(rows[0]["prompt"], 204, ["<think>Steps.\n\n</think> So \\boxed{204}.", "The result is 204."], [0.3, 0.9]),
        aime_line(rows[1]["prompt"], 113, ["\\boxed{113}"], [0.4], idx=1),
        aime_line(rows[0]["prompt"], 204, ["<think>hmm</think>\\boxed{0204}", "<think>x</think>\\boxed{205}"], [0.5, 0.95]),
        {"idx": 1, "answer": 113, "output": {"solution_lst": ["<think>\\boxed{1}</think>\\boxed{\\frac{226}{2}}"], "score_lst": [0.6]}},
    ]
    path = write_jsonl(tmp_path / "aime24_0.jsonl", lines)
    with load_task("aime24") as task:
        report, questions = evaluate(task, [str(path)], "1,2", bootstrap=0)
    assert report["format"] == "original" and [q.id for q in questions] == ["aime24-00", "aime24-01"]
    q0, q1 = questions
    assert [d.index for d in q0.drafts] == [0, 1, 2, 3] and q0.scores == [0.3, 0.9, 0.5, 0.95]  # lines concatenated
    assert not q0.drafts[1].response.startswith("<|im_start|>")  # the templated prompt is cut off, never graded
    assert q0.correct == [True, False, True, False]  # \boxed{204} and \boxed{0204} right; no box wrong; 205 wrong
    assert q0.answers[0] == q0.answers[2] == "204" and q0.answers[1] is None
    assert q1.correct == [True, True] and q1.answers == ["113", "113"]
    m2, _ = means(report, 2)
    # q0 (K=4) at n=2: ranks 3 (F), 1 (F), 2 (T), 0 (T): T iff neither 3 nor 1 -> 1/6; q1: both right
    assert m2["sprm_bon"] == pytest.approx((1 / 6 + 1) / 2)
    assert m2["maj_groups"] == 1.0  # q0: {0,1} -> 204 (the only answer); {2,3}: tie 0204/205 -> 0204, seen first
    assert m2["vote_groups"] == pytest.approx((1 / 2 + 1) / 2)  # {2,3}: 205 (0.95) beats 0204 (0.5)
    assert means(report, 1)[0]["pass@1"] == pytest.approx((1 / 2 + 1) / 2)


def test_custom_math_data_votes_equivalent_answers_and_prompt_box_never_graded(tmp_path):
    prompt = "Half of one, e.g. \\boxed{0.5}? Box your answer."  # graded with the prompt, "It is 1/2." would be right
    data = write_jsonl(tmp_path / "half.jsonl", [{"prompt": prompt, "answer": "\\frac{1}{2}"}])
    lines = [aime_line(prompt, "\\frac{1}{2}", ["\\boxed{0.5}", "\\boxed{\\frac12}", "\\boxed{3}", "It is 1/2."], [0.2, 0.3, 0.4, 0.9])]
    path = write_jsonl(tmp_path / "res.jsonl", lines)
    with load_task("aime24", data) as task:
        report, (q,) = evaluate(task, [str(path)], "4", bootstrap=0)
    assert q.correct == [True, True, False, False]  # the prompt's \boxed{0.5} is not graded; no box -> wrong
    assert q.answers[0] == q.answers[1] == "1/2"
    m4, _ = means(report, 4)
    assert m4["maj_groups"] == 1.0 and m4["vote_groups"] == 1.0 and m4["sprm_bon"] == 0.0 and m4["pass@n"] == 1.0


def test_ceval_summary_per_category(tmp_path):
    rows = json.loads((ROOT / "data" / "ceval.json").read_text(encoding="utf-8"))
    picked = [rows[0], next(r for r in rows if r["sub"] == "law")]
    recs = []
    for row in picked:
        qid = f"ceval-{row['sub']}-{row['id']}"
        wrong = next(c for c in "ABCD" if c != row["answer"])
        recs += [record(qid, 0, f"<think>ANSWER: {wrong}</think>ANSWER: {row['answer']}", 0.7, task="ceval"),
                 record(qid, 1, f"答案：{wrong}", 0.6, task="ceval")]
    path = write_jsonl(tmp_path / "ceval.jsonl", recs)
    with load_task("ceval") as task:
        report, questions = evaluate(task, [str(path)], "2", bootstrap=0)
    summary = report["summary_over_drafts"]
    assert summary["n"] == 4 and summary["accuracy"] == 0.5
    assert set(summary["categories"]) == {"STEM", "Humanities"} and summary["subjects"]["law"]["accuracy"] == 0.5
    assert means(report, 2)[0]["sprm_bon"] == 1.0
    table = format_report(report)
    assert "ceval over all drafts" in table and "Humanities" in table and "law (Humanities)" in table


def test_cli_json_plots_and_determinism(tmp_path, capsys):
    path = write_jsonl(tmp_path / "demo.jsonl", demo_records())
    outs = []
    for i in range(2):
        argv = ["--task", "demo", "--result_paths", str(path), "--N", "2,4", "--json", str(tmp_path / f"m{i}.json"),
                "--bootstrap", "300", "--seed", "3", "--plot", str(tmp_path / f"plots{i}")]
        assert run_cli(argv) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and "N=2 (low)" in outs[0]
    assert (tmp_path / "m0.json").read_bytes() == (tmp_path / "m1.json").read_bytes()
    report = json.loads((tmp_path / "m0.json").read_text())
    assert report["N"] == [2, 4] and [p["N"] for p in report["curve"]] == [1, 2, 4]
    assert report["per_question"][0]["correct"] == [True, False, False, False]
    for name in ("accuracy_vs_n.png", "step_scores.png"):
        assert (tmp_path / "plots0" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_original_format_plots_without_step_scores(tmp_path):
    lines = [{"prompt": "q", "answer": 3, "idx": "demo-test-00000",
              "output": {"solution_lst": ["The answer is 2.", "The answer is 3."], "score_lst": [0.9, 0.1]}}]
    path = write_jsonl(tmp_path / "r.jsonl", lines)
    with pytest.raises(ValueError, match="answer 3 but the demo data"):
        run_cli(["--task", "demo", "--result_paths", str(path)])
    lines[0]["answer"] = 2
    write_jsonl(path, lines)
    assert run_cli(["--task", "demo", "--result_paths", str(path), "--plot", str(tmp_path / "p")]) == 0
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["accuracy_vs_n.png"]


def test_compute_metric_script_with_original_flags(tmp_path):
    assert "metric" in SUBCOMMANDS
    write_jsonl(tmp_path / "demo_0.jsonl", demo_records())
    done = subprocess.run([sys.executable, str(ROOT / "test" / "compute_metric.py"), "--task", "demo",
                           "--result_paths", str(tmp_path / "demo_*.jsonl"), "--N", "2", "--bootstrap", "100"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "N=2 (low)" in done.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "test" / "compute_metric.py"), "--task", "demo",
                          "--result_paths", str(tmp_path / "demo_*.jsonl"), "--N", "8"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--N 8 is more than the most drafts" in bad.stderr


def disagreeing_aime_records():
    """Drafts of aime24-00 (gold 204) where our grading and the original's disagree."""
    q = "aime24-00"
    return [
        record(q, 0, "<think>So \\boxed{204}.</think> The answer is 204.", 0.9, task="aime24"),  # box only in thinking
        record(q, 1, "<think>Maybe \\boxed{204}. Let me keep", 0.8, task="aime24"),  # truncated thinking
        record(q, 2, "<think>Try \\boxed{204}? No.</think> \\boxed{205}", 0.7, task="aime24"),  # both: 205, wrong
        record(q, 3, "<think>x</think> \\boxed{204}", 0.1, task="aime24"),  # both right
        record(q, 4, "No box at all: 204.", 0.2, task="aime24"),  # original: the prompt's empty \boxed{}
    ]


def test_original_grading_disagrees_where_documented(tmp_path):
    path = write_jsonl(tmp_path / "aime24.jsonl", disagreeing_aime_records())
    with load_task("aime24") as task:
        ours, (q_ours,) = evaluate(task, [str(path)], "1,2", bootstrap=0)
        orig, (q_orig,) = evaluate(task, [str(path)], "1,2", bootstrap=0, grading="original")
    assert q_ours.correct == [False, False, False, True, False]
    assert q_orig.correct == [True, True, False, True, False]
    assert q_orig.extracted == ["204", "204", "205", "204", ""]
    assert ours["grading"] == "ours" and orig["grading"] == "original"
    assert means(ours, 1)[0]["pass@1"] == pytest.approx(1 / 5) and means(orig, 1)[0]["pass@1"] == pytest.approx(3 / 5)
    # SPRM Best-of-2, exact expectation over the 10 pairs: the right draft 3 has the lowest score
    assert means(ours, 2)[0]["sprm_bon"] == 0.0
    assert means(orig, 2)[0]["sprm_bon"] == pytest.approx(7 / 10)  # the 7 pairs holding draft 0 or 1
    assert "graded with the original's rules" in format_report(orig)

    rows = json.loads((ROOT / "data" / "ceval.json").read_text(encoding="utf-8"))
    row = rows[0]
    assert row["answer"] == "C"
    qid = f"ceval-{row['sub']}-{row['id']}"
    recs = [record(qid, 0, "<think>答案：A 不对，再想想。</think>ANSWER: C", 0.4, task="ceval"),
            record(qid, 1, "<think>I think answer: C.</think>ANSWER: B", 0.6, task="ceval")]
    path = write_jsonl(tmp_path / "ceval.jsonl", recs)
    with load_task("ceval") as task:
        _, (q_ours,) = evaluate(task, [str(path)], "2", bootstrap=0)
        _, (q_orig,) = evaluate(task, [str(path)], "2", bootstrap=0, grading="original")
    assert (q_ours.extracted, q_ours.correct) == (["C", "B"], [True, False])  # last match after </think>
    assert (q_orig.extracted, q_orig.correct) == (["A", "C"], [False, True])  # first match anywhere

    with load_task("demo") as task, pytest.raises(ValueError, match="--grading original is defined for"):
        evaluate(task, [str(tmp_path / "aime24.jsonl")], grading="original")


def test_compute_metric_grading_original_flag(tmp_path):
    path = write_jsonl(tmp_path / "aime24_0.jsonl", disagreeing_aime_records())
    for grading, pass1 in (("ours", 0.2), ("original", 0.6)):
        out = tmp_path / f"{grading}.json"
        done = subprocess.run([sys.executable, str(ROOT / "test" / "compute_metric.py"), "--task", "aime24",
                               "--result_paths", str(path), "--N", "1", "--bootstrap", "0", "--grading", grading,
                               "--json", str(out)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        report = json.loads(out.read_text())
        assert report["grading"] == grading and report["rows"][0]["metrics"]["pass@1"]["mean"] == pytest.approx(pass1)
