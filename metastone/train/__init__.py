"""GRPO + SPRM training on verl 0.9.1 (MetaStone-S1): the only part of metastone that imports verl.

Files (one concept each):
    config.py         ``SPRMTrainConfig``, the ``actor_rollout_ref.sprm`` section
    validate.py       whole-run checks behind ``--dry-run`` (errors name the keys)
    reward.py         math reward + explicit invalid label (math-verify, text after ``</think>``)
    reward_manager.py verl reward manager that detects truncation from token ids
    outcome.py        reward -> per-sample SPR label plumbing
    head_runtime.py   the head beside FSDP: AdamW, schedule, DP grad sync, checkpoint files
    engine.py         ``SPRMEngine``: verl's FSDP engine + SPR loss in the same forward
    worker.py         Ray worker that sets the head up on the actor engine
    trainer.py        V1 sync trainer hooks + Ray task runner
    verl_ext.py       ``external_lib`` imported by every verl worker (registers the engine)
    launch.py         compose the hydra config; start the verl run (``metastone.cli.train`` parses the flags)
    __main__.py       ``python -m metastone.train [--dry-run] [preset=...] [overrides]`` (= ``metastone train``)

Nothing is imported here so that ``metastone.train.reward`` stays cheap to import.
"""
