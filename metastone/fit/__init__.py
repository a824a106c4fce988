"""Offline SPRM fitting: a head trained on a frozen policy's own drafts, from outcome labels only.

``metastone train-sprm`` runs four resumable stages into one output folder (see ``pipeline.py``):
sample drafts (the harness, no scorer) -> grade them (the task's grader) -> extract feature-layer
hidden states at step positions (``features.py``) -> train ``SPRMHead`` with ``spr_loss``
(``trainer.py``). The same step positions, loss, head and aggregation as RL training and serving:
they all come from ``metastone.sprm``.
"""
