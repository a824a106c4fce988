import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from metastone.cli import main
from tests.serve.test_hf_backend import PROMPT, RESPONSE, independent_score


def test_metastone_score_equals_independent_computation(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "trace.txt").write_text(PROMPT + RESPONSE, encoding="utf-8")
    assert main(["score", "--model", str(tiny_model_dir), "--text-file", str(tmp_path / "trace.txt")]) == 0
    out = json.loads(capsys.readouterr().out)
    ids, positions, scores, value = independent_score(tiny_model_dir, PROMPT, RESPONSE)
    assert set(out) == {"value", "all_scores", "token_ids", "score_positions"}
    assert out["token_ids"] == ids and out["score_positions"] == positions
    assert out["all_scores"] == pytest.approx(scores, abs=1e-6) and out["value"] == pytest.approx(value, abs=1e-6)


def test_console_script_and_errors(tiny_model_dir, tmp_path):
    exe = Path(sys.executable).with_name("metastone")
    (tmp_path / "trace.txt").write_text(PROMPT + RESPONSE, encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    ok = subprocess.run([str(exe), "score", "--model", str(tiny_model_dir), "--text-file", str(tmp_path / "trace.txt")],
                        capture_output=True, text=True, env=env, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert 0 < json.loads(ok.stdout)["value"] < 1
    missing = subprocess.run([str(exe), "score", "--model", str(tiny_model_dir), "--text-file", str(tmp_path / "nope.txt")],
                             capture_output=True, text=True, env=env, timeout=300)
    assert missing.returncode == 2 and "--text-file" in missing.stderr and "nope.txt" in missing.stderr
