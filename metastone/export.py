"""``python -m metastone.export``: a verl FSDP checkpoint -> an HF folder the scorers load unchanged.

    python -m metastone.export --local_dir checkpoints/metastone/run/global_step_100/actor \\
        --target_dir exports/run-step100

Runs verl's own model merger (``verl.model_merger.fsdp_model_merger.FSDPModelMerger``: merges the
``model_world_size_W_rank_r.pt`` shards by DTensor placement and writes the HF model in bf16 with the
tokenizer), then writes the SPRM head that ``metastone.train`` saved beside the shards in BOTH
formats: ``score_module.pt`` (the released MetaStone-S1 format) and ``sprm_head.safetensors`` +
``sprm_config.json`` (ours). ``metastone.serve.hf.scorer.HFScorer(target_dir)`` and
``metastone score --model target_dir`` then work as on a released folder. The head stays fp32; the
backbone is bf16 as in verl's merger (and the released models). With ``--hf_upload_path`` the upload
happens after the head is written.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from metastone.sprm import CONFIG_FILE, HEAD_FILE, RELEASED_HEAD_FILE, load_head, save_head

logger = logging.getLogger(__name__)


def _merger_class():
    from verl.model_merger.fsdp_model_merger import FSDPModelMerger

    class SPRMModelMerger(FSDPModelMerger):
        """verl's FSDP merger + the SPRM head in both formats."""

        def __init__(self, config, *, require_head: bool = True):
            super().__init__(config)
            self.require_head = require_head

        def merge_and_save(self):
            upload = self.config.hf_upload
            self.config.hf_upload = False  # upload only once the head is in the folder
            super().merge_and_save()
            if self.config.operation == "merge":
                self.export_head()
                if upload:
                    self.upload_to_huggingface()

        def export_head(self) -> Path | None:
            src = Path(self.config.local_dir) / HEAD_FILE
            if not src.is_file():
                if self.require_head:
                    raise ValueError(
                        f"{src} not found: this checkpoint has no SPRM head (saved without "
                        "actor_rollout_ref.sprm.enable or without 'model' in checkpoint.save_contents). "
                        "Pass --allow-missing-head to export the policy alone."
                    )
                logger.warning("no SPRM head in %s; exported the policy only.", self.config.local_dir)
                return None
            config = self.model_config
            text = config.get_text_config() if hasattr(config, "get_text_config") else config
            head, head_config = load_head(src, hidden_size=int(text.hidden_size))
            out = save_head(head, self.config.target_dir, head_config, released_format=True)
            logger.info("wrote %s, %s and %s to %s", HEAD_FILE, CONFIG_FILE, RELEASED_HEAD_FILE, out)
            return out

    return SPRMModelMerger


def export_checkpoint(
    local_dir: str | Path,
    target_dir: str | Path,
    *,
    hf_upload_path: str | None = None,
    private: bool = False,
    trust_remote_code: bool = False,
    require_head: bool = True,
) -> Path:
    """Merge ``local_dir`` (a ``global_step_N/actor`` folder) into ``target_dir``; returns ``target_dir``."""
    from verl.model_merger.base_model_merger import ModelMergerConfig

    local = Path(local_dir)
    if not (local / "fsdp_config.json").is_file():
        raise ValueError(
            f"--local_dir {local}: no fsdp_config.json; point it at a verl FSDP checkpoint's actor folder, "
            "e.g. checkpoints/<project>/<run>/global_step_100/actor."
        )
    if not (local / "huggingface").is_dir():
        raise ValueError(f"--local_dir {local}: no huggingface/ folder (config + tokenizer) in this checkpoint.")
    target = Path(target_dir)
    target.mkdir(parents=True, exist_ok=True)
    config = ModelMergerConfig(
        operation="merge", backend="fsdp", target_dir=str(target), hf_upload_path=hf_upload_path, private=private,
        trust_remote_code=trust_remote_code, local_dir=str(local), hf_model_config_path=str(local / "huggingface"),
    )
    merger = _merger_class()(config, require_head=require_head)
    merger.merge_and_save()
    merger.cleanup()
    return target


if __name__ == "__main__":  # ``python -m metastone.export``: the same as ``metastone export`` (metastone.cli.export)
    from metastone.cli import main

    sys.exit(main(["export", *sys.argv[1:]]))
