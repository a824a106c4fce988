"""One concept, one flag across the ``metastone`` subcommands (``--model``, ``--out``, ``--head``, ``--dtype``,
``--task``, ...), with every older spelling (the original ``test/*.py`` flags, our earlier names) kept as an
alias that parses to the same destination."""

import re
import shlex
from pathlib import Path

import pytest

from metastone.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]

# the required flags of each subcommand, written with the shared names
REQUIRED = {
    "infer": {"--task": "demo", "--out": "o.jsonl", "--model": "m"},
    "score": {"--model": "m", "--text-file": "t.txt"},
    "serve-score": {"--model": "m"},
    "serve-policy": {"--model": "m"},
    "train-sprm": {"--model": "m", "--task": "demo", "--out": "runs/x"},
    "demo": {},
    "demo-train": {},
    "prepare-data": {"--out": "train.parquet"},
    "export": {"--local_dir": "ckpt", "--out": "hf"},
    "metric": {"--task": "demo", "--result_paths": "r.jsonl"},
}

# (subcommand, dest, spellings with the shared name first, value); True = a switch
SPELLINGS = [
    ("infer", "model_dir", ["--model", "--model_dir", "--model-dir"], "m2"),
    ("infer", "output_file", ["--out", "--output_file", "--output-file"], "o2.jsonl"),
    ("infer", "head_path", ["--head", "--head_path", "--head-path"], "h"),
    ("infer", "input_file", ["--input_file", "--input-file"], "q.jsonl"),
    ("infer", "max_tokens", ["--max_tokens", "--max-tokens"], "64"),
    ("infer", "no_progress", ["--no_progress", "--no-progress"], True),
    ("serve-score", "model_path", ["--model", "--model_path", "--model-path"], "m2"),
    ("serve-policy", "model_path", ["--model", "--model_path", "--model-path"], "m2"),
    ("train-sprm", "data", ["--input_file", "--input-file", "--data"], "q.jsonl"),
    ("train-sprm", "n_drafts", ["--n-drafts", "--n_drafts"], "4"),
    ("train-sprm", "max_tokens", ["--max-tokens", "--max_tokens"], "64"),
    ("train-sprm", "top_p", ["--top-p", "--top_p"], "0.9"),
    ("train-sprm", "repetition_penalty", ["--repetition-penalty", "--repetition_penalty"], "1.05"),
    ("train-sprm", "no_progress", ["--no-progress", "--no_progress"], True),
    ("demo", "drafts", ["--n-drafts", "--n_drafts", "--drafts"], "4"),
    ("demo", "no_progress", ["--no-progress", "--no_progress"], True),
    ("demo-train", "drafts", ["--n-drafts", "--n_drafts", "--drafts"], "4"),
    ("demo-train", "no_progress", ["--no-progress", "--no_progress"], True),
    ("prepare-data", "output", ["--out", "--output"], "t2.parquet"),
    ("export", "target_dir", ["--out", "--target_dir", "--target-dir"], "hf2"),
]


def parse(command, flags):
    argv = [command]
    for flag, value in flags.items():
        argv += [flag] if value is True else [flag, value]
    return vars(build_parser().parse_args(argv))


@pytest.mark.parametrize("command,dest,spellings,value", SPELLINGS, ids=lambda x: x if isinstance(x, str) else None)
def test_every_spelling_parses_to_the_same_dest(command, dest, spellings, value):
    parsed = []
    for flag in spellings:
        flags = {k: v for k, v in REQUIRED[command].items() if k not in spellings}
        ns = parse(command, {**flags, flag: value})
        want = value if value is True else type(ns[dest])(value)
        assert ns[dest] == want, (flag, ns[dest])
        parsed.append(ns)
    assert all(ns == parsed[0] for ns in parsed), f"{command}: {spellings} parse differently"


@pytest.mark.parametrize("flag,commands", [
    ("--model", ["infer", "score", "serve-score", "serve-policy", "train-sprm"]),
    ("--out", ["infer", "train-sprm", "demo", "demo-train", "prepare-data", "export"]),
    ("--head", ["infer", "score", "serve-score", "demo"]),
    ("--dtype", ["infer", "score", "serve-score", "serve-policy", "demo"]),
    ("--task", ["infer", "metric", "train-sprm", "prepare-data"]),
    ("--input_file", ["infer", "metric", "train-sprm"]),
])
def test_a_shared_flag_is_accepted_by_every_subcommand_with_the_concept(flag, commands):
    value = {"--dtype": "float32", "--task": "demo"}.get(flag, "x")
    for command in commands:
        parse(command, {**REQUIRED[command], flag: value})


def test_the_original_scripts_usage_lines_parse():
    """The command line in each ``test/*.py`` docstring (the original release's flags) parses unchanged."""
    entry = {"inference.py": "infer", "compute_metric.py": "metric", "policy_model_queue.py": "serve-policy",
             "score_model_queue.py": "serve-score"}
    for name, command in entry.items():
        doc = (ROOT / "test" / name).read_text().split('"""')[1]
        line = re.search(r"python test/\S+ (.*?)\n\s*\n", doc + "\n\n", re.S).group(1).replace("\\\n", " ")
        build_parser().parse_args([command, *shlex.split(line)])


def test_train_and_train_sprm_say_which_is_rl_and_which_is_offline(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    listing = " ".join(capsys.readouterr().out.split())
    assert "train RL training: verl GRPO + SPRM head, joint" in listing
    assert "train-sprm offline fitting: an SPRM head on a frozen policy's saved drafts (no RL)" in listing
