"""Compose a training run's hydra config and launch verl's PPO/GRPO with SPRM on it.

``metastone train`` / ``python -m metastone.train`` (``metastone.cli.train``) compose the config
(``compose_config``), validate it (``metastone.train.validate``) and, unless ``--dry-run``, call
``launch``: CPU platform set-up, metastone's agent loops, the metrics file, the resolved config
saved beside the checkpoints, then ``verl.trainer.main_ppo.run_ppo`` starts Ray with ``SPRMTaskRunner``.
"""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_CONFIG_NAME = "sprm_trainer"


def default_config_dir() -> Path:
    """``configs/`` of the source checkout (metastone is installed editable)."""
    return Path(__file__).resolve().parents[2] / "configs"


def compose_config(overrides: list[str], config_dir: str | Path | None = None, config_name: str = DEFAULT_CONFIG_NAME):
    """The composed (unresolved) hydra config: ``configs/<config_name>.yaml`` over verl's ``ppo_trainer``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    config_dir = Path(config_dir or default_config_dir()).resolve()
    if not (config_dir / f"{config_name}.yaml").is_file():
        raise ValueError(
            f"no {config_name}.yaml in {config_dir}; pass --config-dir pointing at metastone's configs/ folder."
        )
    from hydra.errors import HydraException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base=None):
            return compose(config_name=config_name, overrides=list(overrides))
    except HydraException as exc:
        raise ValueError(f"hydra could not compose {config_name} with overrides {list(overrides)}: {exc}") from exc


def launch(cfg) -> None:
    """Start the verl run of a composed, validated config (``metastone.train.validate``)."""
    from omegaconf import OmegaConf

    if OmegaConf.select(cfg, "trainer.device") == "cpu":
        from metastone.train.cpu_platform import prepare_cpu_run

        add_ray_env_vars(cfg, prepare_cpu_run(cfg))
    watch = None
    if joins_running_cluster(cfg):
        from metastone.train.cluster import NodeWatch

        use_cluster_resources(cfg)
        watch = NodeWatch(OmegaConf.select(cfg, "trainer.default_local_dir"))
        watch.start()
    set_agent_loops(cfg)
    metrics_file = set_metrics_file(cfg)
    if metrics_file is not None:
        add_ray_env_vars(cfg, {"VERL_FILE_LOGGER_PATH": str(metrics_file)})
    from verl.trainer.main_ppo import run_ppo

    from metastone.train.trainer import SPRMTaskRunner

    saved = save_resolved_config(cfg)
    logger.info("starting verl run %s (resolved config: %s)", OmegaConf.select(cfg, "trainer.experiment_name"), saved)
    try:
        run_ppo(cfg, task_runner_class=SPRMTaskRunner)
    except Exception:
        lost = watch.wait_for_loss() if watch is not None else []
        if lost:  # a node died: say so (and exit NODE_LOST_EXIT) instead of the collective's error
            watch.stop(lost)
        raise


def joins_running_cluster(cfg) -> bool:
    """True when the run connects to a Ray cluster started beforehand (``ray start``, as
    ``verl/examples/ray/run_head.sh`` does): ``ray_kwargs.ray_init.address`` or ``RAY_ADDRESS`` names one."""
    import os

    from omegaconf import OmegaConf

    address = OmegaConf.select(cfg, "ray_kwargs.ray_init.address") or os.environ.get("RAY_ADDRESS", "")
    return bool(address) and address != "local"


def use_cluster_resources(cfg) -> None:
    """Drop ``num_cpus`` / ``num_gpus`` from ``ray_kwargs.ray_init`` for a run that joins a running cluster.

    The cluster's nodes declared their CPUs and GPUs when they started (``CPUS_PER_NODE`` /
    ``GPUS_PER_NODE`` of ``run_head.sh`` / ``run_worker.sh``); ``ray.init`` refuses resource counts
    when it connects to them. verl still checks that the cluster has ``nnodes x n_gpus_per_node`` slots.
    """
    from omegaconf import open_dict

    with open_dict(cfg):
        ray_init = cfg.ray_kwargs.ray_init
        for key in ("num_cpus", "num_gpus"):
            if ray_init.get(key) is not None:
                logger.info("joining a running Ray cluster: ray_kwargs.ray_init.%s=%s is ignored (the nodes "
                            "declared their resources at `ray start`)", key, ray_init[key])
                ray_init[key] = None


def add_ray_env_vars(cfg, env: dict[str, str]) -> None:
    """Add ``env`` to ``ray_kwargs.ray_init.runtime_env.env_vars`` (what every Ray process of the run sees)."""
    from omegaconf import open_dict

    with open_dict(cfg):
        ray_init = cfg.ray_kwargs.ray_init
        if ray_init.get("runtime_env") is None:
            ray_init.runtime_env = {}
        if ray_init.runtime_env.get("env_vars") is None:
            ray_init.runtime_env.env_vars = {}
        ray_init.runtime_env.env_vars.update(env)


def set_agent_loops(cfg) -> None:
    """Register metastone's agent loops (``metastone/train/agent_loops.yaml``) unless the run names its own file."""
    from omegaconf import OmegaConf, open_dict

    from metastone.train.completion_loop import AGENT_LOOPS_FILE

    if OmegaConf.select(cfg, "actor_rollout_ref.rollout.agent.agent_loop_config_path"):
        return
    with open_dict(cfg):
        cfg.actor_rollout_ref.rollout.agent.agent_loop_config_path = str(AGENT_LOOPS_FILE)


def set_metrics_file(cfg) -> Path | None:
    """With ``file`` in ``trainer.logger``: each run's metrics go to ``<default_local_dir>/metrics/<start>.jsonl``.

    verl's file logger truncates its file when it opens it, so a resumed run writes a new file beside
    the first instead of erasing it. ``VERL_FILE_LOGGER_PATH`` in the environment wins.
    """
    import os
    import time

    from omegaconf import OmegaConf

    loggers = OmegaConf.select(cfg, "trainer.logger") or []
    loggers = [loggers] if isinstance(loggers, str) else list(loggers)
    if "file" not in loggers or os.environ.get("VERL_FILE_LOGGER_PATH"):
        return None
    folder = Path(OmegaConf.select(cfg, "trainer.default_local_dir")).expanduser().resolve() / "metrics"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.jsonl"
    os.environ["VERL_FILE_LOGGER_PATH"] = str(path)
    return path


def save_resolved_config(cfg) -> Path:
    """Write the fully resolved config to ``<trainer.default_local_dir>/run_config.yaml`` (beside the checkpoints)."""
    import hashlib

    from omegaconf import OmegaConf

    text = OmegaConf.to_yaml(cfg, resolve=True)
    out = Path(OmegaConf.select(cfg, "trainer.default_local_dir")).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "run_config.yaml"
    path.write_text(f"# sha256 {hashlib.sha256(text.encode()).hexdigest()[:16]}\n{text}")
    return path
