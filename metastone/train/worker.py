"""Ray worker that sets up the SPRM head on the actor engine after verl has built it.

``SPRMActorRolloutRefWorker`` is verl's hybrid ``ActorRolloutRefWorker`` with one extra step in
``init_model``: read ``actor_rollout_ref.sprm`` (a sibling of ``model``/``actor``, which verl converts
to strict dataclasses and would reject) and call ``SPRMEngine.setup_sprm`` on the actor's engine.
The loss function stays verl's ``ppo_loss``; the engine adds the SPR term inside its forward.
"""

from __future__ import annotations

import logging

from verl.single_controller.base.decorator import Dispatch, register
from verl.workers.engine_workers import ActorRolloutRefWorker

from metastone.train import hf_rollout  # noqa: F401  (registers rollout.name=hf in this worker)
from metastone.train.config import SPRMTrainConfig, show_metastone_info_logs
from metastone.train.cpu_platform import is_cpu_platform, open_cpu_process_group
from metastone.train.engine import MODEL_TYPE, SPRMEngine

logger = logging.getLogger(__name__)


class SPRMActorRolloutRefWorker(ActorRolloutRefWorker):
    """``ActorRolloutRefWorker`` whose actor engine trains the SPRM head (see module doc)."""

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def init_model(self):
        show_metastone_info_logs()
        if is_cpu_platform():
            open_cpu_process_group()  # before verl's, whose backend string would name cpu twice
        super().init_model()
        log_placement(self.rank, self.world_size)
        if self.actor is None:
            return
        config = SPRMTrainConfig.from_mapping(self.config.get("sprm"))
        engine = self.actor.engine
        if not isinstance(engine, SPRMEngine):
            if config.enable:
                raise ValueError(
                    f"the actor engine is {type(engine).__name__}, not SPRMEngine: set "
                    f"actor_rollout_ref.model.model_type={MODEL_TYPE} and "
                    "actor_rollout_ref.model.external_lib=metastone.train.verl_ext."
                )
            return
        engine.setup_sprm(config)


def log_placement(rank: int, world_size: int) -> None:
    """One line per training process: which Ray node it runs on (multi-node runs are checked from it)."""
    import ray

    context = ray.get_runtime_context()
    logger.info("training rank %d of %d on Ray node %s (%s)", rank, world_size, context.get_node_id(),
                ray.util.get_node_ip_address())
