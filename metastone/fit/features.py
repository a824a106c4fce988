"""Feature-layer hidden states at step positions, extracted once and stored in shards.

The drafts of one question share their prompt, so the prompt runs once (up to the feature layer)
and its key/value cache is repeated for the K responses: about 2.5x fewer tokens than K full
sequences on the demo task, with the same numbers (a test compares both paths). Only the
``[n_steps, d]`` rows read by the head are kept. Shards (``features/shard-NNNNN.safetensors``,
``shard_questions`` questions each) are written atomically, so a killed extraction resumes at the
first missing shard.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from metastone.sprm.features import extract_features
from metastone.sprm.steps import StepSpec, step_positions


@torch.no_grad()
def question_features(model, prompt_ids: Sequence[int], responses: Sequence[Sequence[int]], spec: StepSpec,
                      feature_layer: int = -2, batch: int = 16) -> list[torch.Tensor]:
    """``[n_steps_i, d]`` float32 features of each response of one prompt (rows in step order)."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    plen = len(prompt_ids)
    positions = [[p - plen for p in step_positions(list(prompt_ids) + list(r), plen, spec)] for r in responses]
    out: list[torch.Tensor | None] = [None] * len(responses)
    hidden = model.config.get_text_config().hidden_size
    todo = [i for i, pos in enumerate(positions) if pos]
    for i, pos in enumerate(positions):
        if not pos:
            out[i] = torch.zeros(0, hidden)
    if not todo:
        return out  # type: ignore[return-value]
    prompt = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)
    prompt_cache = DynamicCache(config=model.config)
    extract_features(model, prompt, feature_layer=feature_layer, past_key_values=prompt_cache)
    for start in range(0, len(todo), batch):
        idx = todo[start:start + batch]
        # only up to the last scored position is needed: causal attention ignores what follows
        length = max(positions[i][-1] for i in idx) + 1
        ids = torch.zeros(len(idx), length, dtype=torch.long, device=device)
        mask = torch.zeros(len(idx), plen + length, dtype=torch.long, device=device)
        mask[:, :plen] = 1
        for row, i in enumerate(idx):
            r = list(responses[i])[:length]
            ids[row, :len(r)] = torch.tensor(r, dtype=torch.long)
            mask[row, plen:plen + len(r)] = 1
        cache = copy.deepcopy(prompt_cache)
        cache.batch_repeat_interleave(len(idx))
        pos_ids = torch.arange(plen, plen + length, device=device).expand(len(idx), -1)
        feats = extract_features(model, ids, attention_mask=mask, position_ids=pos_ids, feature_layer=feature_layer,
                                 past_key_values=cache)
        for row, i in enumerate(idx):
            out[i] = feats[row, positions[i]].float().cpu()
    return out  # type: ignore[return-value]


def shard_path(folder: Path, index: int) -> Path:
    return folder / f"shard-{index:05d}.safetensors"


def write_shard(path: Path, keys: Sequence[str], feats: Sequence[torch.Tensor]) -> None:
    """One shard: concatenated rows plus offsets, keys in the metadata; written atomically."""
    offsets = [0]
    for f in feats:
        offsets.append(offsets[-1] + f.shape[0])
    hidden = next((f.shape[1] for f in feats if f.dim() == 2), 0)
    rows = torch.cat([f.reshape(-1, hidden) for f in feats]) if feats else torch.zeros(0, hidden)
    tmp = path.with_name(path.name + ".tmp")
    save_file({"features": rows.contiguous(), "offsets": torch.tensor(offsets, dtype=torch.long)}, str(tmp),
              metadata={"keys": json.dumps(list(keys))})
    os.replace(tmp, path)


def read_shard(path: Path) -> dict[str, torch.Tensor]:
    """key -> ``[n_steps, d]`` features of one shard."""
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = json.loads(f.metadata()["keys"])
            rows, offsets = f.get_tensor("features"), f.get_tensor("offsets").tolist()
    except Exception as exc:  # noqa: BLE001 - a damaged shard is named, and deleting it is the fix
        raise ValueError(f"{path}: unreadable feature shard ({exc}); delete it and rerun to extract it again.") from exc
    if len(offsets) != len(keys) + 1:
        raise ValueError(f"{path}: {len(keys)} keys but {len(offsets)} offsets; delete it and rerun.")
    return {k: rows[offsets[i]:offsets[i + 1]] for i, k in enumerate(keys)}
