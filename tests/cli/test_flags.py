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


# --- flags generated from the config dataclasses (metastone.cli.flags): each default is stated once ---

# (subcommand, config class, fields whose flag default differs on purpose -> why)
CONFIG_FLAGS = [
    ("infer", "metastone.sampling:Sampling", {}),
    ("infer", "metastone.engines.factory:EngineConfig", {}),
    ("infer", "metastone.harness.runner:RunConfig", {
        "batch_size": "None: resolved per backend (metastone.harness.infer.IN_FLIGHT)",
        "workers": "None: resolved per backend (metastone.harness.infer.IN_FLIGHT)",
        "chat_template": "auto | on | off (auto: the task decides), resolved to RunConfig's bool",
    }),
    ("train-sprm", "metastone.fit.config:FitConfig", {
        "max_tokens": "resolved from --task (demo: DEMO_SAMPLING's 64)",
        "separators": "resolved from --model (the demo model's '.')",
    }),
]


def _cls(path):
    import importlib

    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("command,cls,deliberate", CONFIG_FLAGS, ids=[f"{c}-{k.split(':')[1]}" for c, k, _ in CONFIG_FLAGS])
def test_every_flag_default_is_its_config_fields(command, cls, deliberate):
    from dataclasses import fields

    from metastone.cli.flags import field_default

    from dataclasses import MISSING

    ns = parse(command, REQUIRED[command])
    checked = 0
    for f in fields(_cls(cls)):
        default = field_default(f)
        if f.name not in ns or f.name in deliberate or default is MISSING:
            continue
        value = tuple(ns[f.name]) if isinstance(ns[f.name], list) else ns[f.name]
        assert value == default, f"{command} --{f.name}: flag default {value!r}, {cls} field default {default!r}"
        checked += 1
    assert checked >= 4
    assert set(deliberate) <= set(ns), f"{command}: deliberate differences name flags it does not have"


def test_search_flags_take_the_strategys_defaults_and_their_help_from_its_fields():
    from metastone.cli.infer import SEARCH_FLAGS

    ns = parse("infer", REQUIRED["infer"])
    assert all(ns[name] is None for name in SEARCH_FLAGS)
    assert parse("infer", {**REQUIRED["infer"], "--c-uct": "0.3"})["c_uct"] == 0.3
    sub = next(a for a in build_parser()._subparsers._group_actions[0].choices["infer"]._actions if a.dest == "c_uct")
    assert sub.help.startswith("mcts: UCT exploration constant")


def test_train_sprm_minimal_flags_give_the_config_defaults():
    from metastone.cli.train_sprm import config_from_args
    from metastone.fit.config import FitConfig

    args = build_parser().parse_args(["train-sprm", "--model", "m", "--task", "math", "--out", "o"])
    assert config_from_args(args) == FitConfig(model="m", task="math", out="o")
    demo = build_parser().parse_args(["train-sprm", "--model", "m", "--task", "demo", "--out", "o", "--no-standardize",
                                      "--separators", "\\n", "--think-tokens", "<a>", "</a>"])
    cfg = config_from_args(demo)
    assert (cfg.max_tokens, cfg.standardize, cfg.separators, cfg.think_tokens) == (64, False, ("\n",), ("<a>", "</a>"))


def test_add_config_flags_forms_and_errors():
    import argparse
    from dataclasses import dataclass, field

    from metastone.cli.flags import add_config_flags

    @dataclass
    class C:
        name: str = field(metadata={"help": "required"})
        on: bool = True
        off: bool = False
        pair: tuple[str, str] | None = None
        many: tuple[str, ...] = ("a",)
        mode: str = field(default="x", metadata={"choices": ("x", "y")})

    p = argparse.ArgumentParser()
    assert add_config_flags(p, C) == ["name", "on", "off", "pair", "many", "mode"]
    ns = p.parse_args(["--name", "n", "--no-on", "--off", "--pair", "s", "e", "--many", "b", "c"])
    assert (ns.name, ns.on, ns.off, ns.pair, ns.many, ns.mode) == ("n", False, True, ["s", "e"], ["b", "c"], "x")
    with pytest.raises(SystemExit):
        p.parse_args(["--name", "n", "--mode", "z"])
    with pytest.raises(SystemExit):
        p.parse_args([])  # --name is required
    with pytest.raises(TypeError, match=r"no field\(s\) \['nope'\]"):
        add_config_flags(argparse.ArgumentParser(), C, only=["nope"])


# Sampling numbers a module may state besides metastone/sampling.py, each with its reason.
SAMPLING_LITERAL_ALLOWED = {
    ("metastone/serve/http/policy_server.py", "max_tokens"): "the original /generate body's default (1024) and OpenAI's (16)",
    ("metastone/serve/http/policy_server.py", "repetition_penalty"): "API bodies: 1.0 = off when a request leaves it out",
    ("metastone/serve/http/policy_server.py", "temperature"): "OpenAI /v1/completions' default (1.0)",
    ("metastone/serve/http/policy_server.py", "top_p"): "OpenAI /v1/completions' default (1.0)",
}


def test_no_sampling_literal_outside_sampling_py():
    """Sampling defaults live in metastone/sampling.py: no other module writes a number for them (a keyword
    argument, a dataclass field or a pydantic ``Field``), except the API bodies listed above."""
    import ast

    names = {"max_tokens", "temperature", "top_p", "repetition_penalty"}
    found = []
    for path in sorted((ROOT / "metastone").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel == "metastone/sampling.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            pairs = []
            if isinstance(node, ast.keyword) and node.arg in names:
                pairs.append((node.arg, node.value))
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id in names:
                value = node.value
                if isinstance(value, ast.Call) and value.args:
                    value = value.args[0]
                pairs.append((node.target.id, value))
            for name, value in pairs:
                if isinstance(value, ast.Constant) and isinstance(value.value, (int, float)) \
                        and not isinstance(value.value, bool) and (rel, name) not in SAMPLING_LITERAL_ALLOWED:
                    found.append(f"{rel}:{node.lineno} {name}={value.value}")
    assert not found, "sampling numbers outside metastone/sampling.py: " + "; ".join(found)
