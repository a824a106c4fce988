"""Trainer hooks: the SPRM worker replaces verl's actor worker; labels are written for the actor update."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.train


@pytest.fixture(scope="module")
def config(tmp_path_factory, tiny_model_dir):
    from metastone.train.launch import compose_config

    return compose_config(["preset=tiny", f"actor_rollout_ref.model.path={tiny_model_dir}"])


def test_actor_role_gets_the_sprm_worker(config):
    from verl.trainer.ppo.utils import Role

    from metastone.train.trainer import SPRMPPOTrainer
    from metastone.train.worker import SPRMActorRolloutRefWorker

    trainer = SPRMPPOTrainer.__new__(SPRMPPOTrainer)
    trainer.config = config
    trainer._init_resource_pool_mgr()
    role = Role.ActorRolloutRef  # use_kl_loss=true: actor, rollout and ref share the worker
    assert trainer.role_worker_mapping[role].__ray_actor_class__ is SPRMActorRolloutRefWorker


def test_worker_init_model_keeps_verls_dispatch():
    from verl.single_controller.base.decorator import MAGIC_ATTR, Dispatch
    from verl.workers.engine_workers import ActorRolloutRefWorker

    from metastone.train.worker import SPRMActorRolloutRefWorker

    ours = getattr(SPRMActorRolloutRefWorker.init_model, MAGIC_ATTR)
    assert ours == getattr(ActorRolloutRefWorker.init_model, MAGIC_ATTR)
    assert ours["dispatch_mode"] == Dispatch.ONE_TO_ALL


def test_labels_are_written_to_transfer_queue(config, monkeypatch):
    from tensordict import NonTensorStack, TensorDict

    import metastone.train.trainer as trainer_module
    from metastone.train.trainer import SPRMPPOTrainer

    rm = torch.nested.as_nested_tensor([torch.tensor([0.0, 1.0]), torch.tensor([0.0]), torch.tensor([0.0, 0.0])],
                                       layout=torch.jagged)
    extra = NonTensorStack(*[{"reward_extra_info": {"sprm_label": v}} for v in (1.0, -1.0, 0.0)])
    uids = NonTensorStack("q1", "q1", "q2")
    stored = TensorDict({"rm_scores": rm, "extra_fields": extra, "uid": uids}, batch_size=[3])
    written = {}

    class FakeTQ:
        @staticmethod
        def kv_batch_get(keys, partition_id, select_fields):
            return stored.select(*select_fields)

        @staticmethod
        def kv_batch_put(keys, partition_id, fields):
            written.update(keys=keys, fields=fields)

    class Batch:
        keys, partition_id = ["a_0_0", "a_1_0", "pad_0_0"], "train"
        tags = [{}, {}, {"is_padding": True}]

    monkeypatch.setattr(trainer_module, "tq", FakeTQ)
    trainer = SPRMPPOTrainer.__new__(SPRMPPOTrainer)
    trainer.config = config
    metrics = {}
    trainer._write_outcome_labels(Batch(), metrics)
    assert written["keys"] == Batch.keys
    # invalid_outcome=negative (the default): the invalid trajectory is a negative, padding is excluded
    assert written["fields"]["sprm_outcome"].tolist() == [1.0, 0.0, -1.0]
    assert written["fields"]["sprm_group"].tolist() == [0, 0, 1]  # each trajectory's prompt, for the ranking metrics
    assert metrics["sprm/label_invalid_frac"] == pytest.approx(1 / 2)
    assert metrics["sprm/label_negative_frac"] == pytest.approx(1 / 2)
