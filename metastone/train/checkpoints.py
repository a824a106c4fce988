"""The resume point of a run: verl's ``latest_checkpointed_iteration.txt``, checked before verl reads it.

verl saves a step as ``global_step_<N>/`` (every rank's actor files, the SPRM head's files written by
rank 0 inside the same save, then ``data.pt``, the data loader's position) and only then writes the
step number into the tracker file, so a run killed during a save resumes from the previous step. The
tracker itself is rewritten in place (``open(..., "w")``): a kill between truncating and writing it
leaves it empty, and verl's reader then fails on ``int("")``; a tracker naming a folder that is gone
makes verl start from step 0 without a word. ``check_resume_point`` (called by the trainer before
verl loads) turns both into a resume from the newest complete step, with a warning that says so.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

logger = logging.getLogger(__name__)

TRACKER = "latest_checkpointed_iteration.txt"
STEP_DIR = re.compile(r"global_step_(\d+)$")


def complete_steps(checkpoint_dir: str | Path) -> list[int]:
    """Steps whose folder holds ``data.pt`` (written after every rank's save returned), oldest first."""
    steps = []
    for child in Path(checkpoint_dir).glob("global_step_*"):
        match = STEP_DIR.search(child.name)
        if match and (child / "data.pt").is_file() and (child / "actor").is_dir():
            steps.append(int(match.group(1)))
    return sorted(steps)


def write_tracker(checkpoint_dir: str | Path, step: int) -> None:
    """Write the tracker atomically (temporary file, then rename)."""
    path = Path(checkpoint_dir) / TRACKER
    tmp = path.with_name(f".{TRACKER}.{os.getpid()}.tmp")
    tmp.write_text(str(step))
    os.replace(tmp, path)


def check_resume_point(checkpoint_dir: str | Path) -> int | None:
    """The step a resumed run starts from, after repairing a torn or dangling tracker (module doc)."""
    folder = Path(checkpoint_dir)
    tracker = folder / TRACKER
    if not tracker.exists():
        return None
    text = tracker.read_text().strip()
    if text.isdigit() and (folder / f"global_step_{text}").is_dir():
        return int(text)
    steps = complete_steps(folder)
    problem = (f"{tracker} names global_step_{text}, which is not there" if text.isdigit()
               else f"{tracker} holds {text!r}, not a step number (a save was interrupted while writing it)")
    if not steps:
        tracker.unlink()
        logger.warning("%s and no complete checkpoint is left in %s: the run starts from step 0", problem, folder)
        return None
    write_tracker(folder, steps[-1])
    logger.warning("%s: resuming from global_step_%d, the newest complete checkpoint", problem, steps[-1])
    return steps[-1]
