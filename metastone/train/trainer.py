"""verl V1 trainer and Ray task runner for GRPO + SPRM (``python -m metastone.train`` launches these).

Four hooks on verl's synchronous V1 trainer, nothing re-implemented:

- ``_init_resource_pool_mgr``: verl hard-codes ``ray.remote(ActorRolloutRefWorker)``; we swap in
  ``SPRMActorRolloutRefWorker`` for the actor role (the ref worker is unchanged).
- ``_compute_advantage``: before verl's GRPO advantages, read each trajectory's
  ``reward_extra_info["sprm_label"]``, apply ``actor_rollout_ref.sprm.invalid_outcome`` and write
  ``sprm_outcome`` (and ``sprm_group``, the prompt of each trajectory) to TransferQueue, which the
  actor update then receives (``metastone.train.outcome``).
- ``_load_checkpoint``: first repair a torn or dangling ``latest_checkpointed_iteration.txt``
  (``metastone.train.checkpoints``), then verl's resume.
- ``_update_actor``: after verl's update, the step's within-question AUROC and score gap of the
  head (``sprm/within_q_auroc``, ``sprm/step_score_gap``) from the engine's per-mini-batch sums.

Why not ``@register_trainer("sprm_sync")``: verl branches on ``trainer_mode == "sync"`` in several
places (replay buffer class, TransferQueue checkpointing, exact refill), so a new mode name would
silently run the async code paths. ``trainer.v1.trainer_mode`` stays ``sync`` and our own task
runner picks the class. The task runner mirrors verl's ``TaskRunnerV1.run`` (a Ray actor class
cannot be subclassed).
"""

from __future__ import annotations

import logging

import ray
import torch
import transfer_queue as tq
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDict
from verl.trainer.ppo.utils import Role
from verl.trainer.ppo.v1 import PPOTrainerSync

from metastone.train import hf_rollout  # noqa: F401  (registers rollout.name=hf for the replicas)
from metastone.train.checkpoints import check_resume_point
from metastone.train.config import SPRMTrainConfig
from metastone.train.outcome import GROUP_KEY, OUTCOME_KEY, group_ids, per_sample_sum, spr_labels, step_rank_metrics
from metastone.train.worker import SPRMActorRolloutRefWorker

logger = logging.getLogger(__name__)

ACTOR_ROLES = (Role.Actor, Role.ActorRollout, Role.ActorRolloutRef)


class SPRMPPOTrainer(PPOTrainerSync):
    """verl's sync V1 PPO trainer with the SPRM worker and outcome labels (see module doc)."""

    def _init_resource_pool_mgr(self):
        super()._init_resource_pool_mgr()
        for role in ACTOR_ROLES:
            if role in self.role_worker_mapping:
                self.role_worker_mapping[role] = ray.remote(SPRMActorRolloutRefWorker)

    def _load_checkpoint(self):
        if self.config.trainer.resume_mode == "auto":
            check_resume_point(self.config.trainer.default_local_dir)
        return super()._load_checkpoint()

    def _compute_advantage(self, batch, metrics: dict):
        self._write_outcome_labels(batch, metrics)
        return super()._compute_advantage(batch, metrics)

    def _update_actor(self, batch, metrics: dict):
        batch = super()._update_actor(batch, metrics)
        metrics.update(step_rank_metrics(metrics))
        return batch

    def _write_outcome_labels(self, batch, metrics: dict) -> None:
        sprm = SPRMTrainConfig.from_mapping(self.config.actor_rollout_ref.get("sprm"))
        if not sprm.enable:
            return
        data = tq.kv_batch_get(
            keys=batch.keys, partition_id=batch.partition_id, select_fields=["uid", "extra_fields", "rm_scores"]
        )
        labels, label_metrics = spr_labels(
            list(data["extra_fields"]),
            per_sample_sum(data["rm_scores"]),
            threshold=sprm.outcome_threshold,
            is_padding=[bool(tag.get("is_padding", False)) for tag in batch.tags],
            invalid_outcome=sprm.invalid_outcome,
        )
        tq.kv_batch_put(
            keys=batch.keys,
            partition_id=batch.partition_id,
            fields=TensorDict(
                {OUTCOME_KEY: labels.to(torch.float32), GROUP_KEY: group_ids(list(data["uid"]))},
                batch_size=len(batch.keys),
            ),
        )
        metrics.update(label_metrics)


@ray.remote(num_cpus=1)
class SPRMTaskRunner:
    """Ray driver actor: TransferQueue, trainer, agent-loop manager, fit (verl ``TaskRunnerV1.run`` order)."""

    def run(self, config: DictConfig) -> None:
        from verl.trainer.ppo.v1 import AgentLoopManagerTQ
        from verl.utils.import_utils import load_class_from_fqn
        from verl.utils.logging_utils import configure_verl_logging

        configure_verl_logging()
        config.transfer_queue.enable = True
        OmegaConf.resolve(config)
        tq.init(config.transfer_queue)
        trainer, succeeded = None, False
        try:
            trainer = SPRMPPOTrainer(config=config)
            trainer.init()
            manager_fqn = config.actor_rollout_ref.rollout.get("agent", {}).get("agent_loop_manager_class")
            manager_cls = load_class_from_fqn(manager_fqn, "AgentLoopManager") if manager_fqn else AgentLoopManagerTQ
            manager = manager_cls.create(
                config=config,
                llm_client=trainer.get_llm_client(),
                teacher_client=trainer.get_teacher_client(),
                reward_loop_worker_handles=trainer.get_reward_handles(),
            )
            trainer.fit(manager)
            succeeded = True
        finally:
            try:
                tracking = getattr(trainer, "logger", None)
                if tracking is not None:
                    tracking.finish(exit_code=0 if succeeded else 1)
            finally:
                tq.close()
