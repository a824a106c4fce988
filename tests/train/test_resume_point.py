"""The resume point (``metastone.train.checkpoints``) and the lost-node report (``metastone.train.cluster``)."""

from __future__ import annotations

import logging

import pytest

from metastone.train.checkpoints import TRACKER, check_resume_point, complete_steps
from metastone.train.cluster import NODE_LOST_EXIT, NodeWatch

pytestmark = pytest.mark.train


def _step(folder, n, complete=True):
    actor = folder / f"global_step_{n}" / "actor"
    actor.mkdir(parents=True)
    if complete:
        (folder / f"global_step_{n}" / "data.pt").write_bytes(b"x")


def test_a_sound_tracker_is_left_alone(tmp_path):
    _step(tmp_path, 1)
    _step(tmp_path, 2)
    (tmp_path / TRACKER).write_text("2")
    assert check_resume_point(tmp_path) == 2 and (tmp_path / TRACKER).read_text() == "2"
    assert check_resume_point(tmp_path / "nothing-here") is None


@pytest.mark.parametrize("content", ["", "3\x00", "garbage"])
def test_a_torn_tracker_resumes_from_the_newest_complete_step(tmp_path, caplog, content):
    _step(tmp_path, 1)
    _step(tmp_path, 2)
    _step(tmp_path, 3, complete=False)  # killed during this save
    (tmp_path / TRACKER).write_text(content)
    with caplog.at_level(logging.WARNING, logger="metastone.train.checkpoints"):
        assert check_resume_point(tmp_path) == 2
    assert (tmp_path / TRACKER).read_text() == "2" and complete_steps(tmp_path) == [1, 2]
    assert "resuming from global_step_2" in caplog.text and "not a step number" in caplog.text


def test_a_tracker_naming_a_missing_step_is_reported_not_silently_restarted(tmp_path, caplog):
    _step(tmp_path, 4)
    (tmp_path / TRACKER).write_text("7")
    with caplog.at_level(logging.WARNING, logger="metastone.train.checkpoints"):
        assert check_resume_point(tmp_path) == 4
    assert "names global_step_7, which is not there" in caplog.text


def test_no_complete_step_left_starts_from_zero_with_a_warning(tmp_path, caplog):
    _step(tmp_path, 1, complete=False)
    (tmp_path / TRACKER).write_text("")
    with caplog.at_level(logging.WARNING, logger="metastone.train.checkpoints"):
        assert check_resume_point(tmp_path) is None
    assert not (tmp_path / TRACKER).exists() and "starts from step 0" in caplog.text


def test_a_lost_node_is_named_with_the_resume_point(tmp_path, capsys):
    _step(tmp_path, 2)
    (tmp_path / TRACKER).write_text("2")
    codes = []
    watch = NodeWatch(tmp_path, exit_fn=codes.append)
    alive = {"Alive": True, "NodeManagerAddress": "10.0.0.2"}
    watch.watched = {"head": {**alive, "NodeManagerAddress": "10.0.0.1"}, "w1": alive}
    assert watch.lost({"head": {"Alive": True}, "w1": {"Alive": True}}) == []
    lost = watch.lost({"head": {"Alive": True},
                       "w1": {"Alive": False, "DeathReasonMessage": "health check failed"}})
    assert [n["NodeID"] for n in lost] == ["w1"]
    assert [n["NodeID"] for n in watch.lost({"head": {"Alive": True}})] == ["w1"]  # no longer listed at all
    watch.stop(lost)
    err = capsys.readouterr().err
    assert codes == [NODE_LOST_EXIT]
    assert "node w1 at 10.0.0.2 (health check failed)" in err and str(tmp_path / "global_step_2") in err
