"""spr_loss over a real 2-process gloo group: identical loss on both ranks, correct gradients, no hang."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from metastone.devices import free_port
from metastone.sprm import spr_loss

# Rank 0 and rank 1 data; the single-process reference sees both.
LOGITS = [
    [[2.0, -1.0, 0.5, 0.0], [-1.5, -0.2, 0.0, 0.0]],
    [[0.7, 1.2, -0.4, 3.0], [-2.0, 0.9, -0.1, 0.0]],
]
MASKS = [[[1, 1, 1, 0], [1, 1, 1, 0]], [[1, 1, 1, 1], [1, 1, 1, 0]]]
OUTCOMES = [[1.0, 0.0], [1.0, 0.0]]
NO_STEPS = [[0, 0, 0, 0], [0, 0, 0, 0]]


def _worker(rank, world, port, empty_rank, queue, agreement):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        mask = NO_STEPS if rank == empty_rank else MASKS[rank]
        logits = torch.tensor(LOGITS[rank], requires_grad=True)
        # Several calls, as with gradient accumulation: collectives must stay in step on every rank.
        for _ in range(3):
            logits.grad = None
            loss, metrics = spr_loss(logits, torch.tensor(OUTCOMES[rank]), torch.tensor(mask, dtype=torch.bool),
                                     dp_group=dist.group.WORLD, agreement=agreement)
            loss.backward()
        queue.put((rank, loss.item(), metrics, logits.grad.tolist()))
        # Both ranks are past every collective before either tears gloo down: a rank that destroys
        # the group while its peer still talks to it can abort the peer at exit ("terminate called
        # without an active exception", seen once under load).
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Leave without the interpreter's teardown: on some hosts torch's C++ destructors abort a spawned
    # gloo process at exit ("terminate called without an active exception") after all work is done.
    # What this test checks (results, no hang) is already delivered; flush it, then exit cleanly.
    queue.close()
    queue.join_thread()
    os._exit(0)


def _run(empty_rank, agreement):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, empty_rank, queue, agreement)) for r in range(2)]
    for p in procs:
        p.start()
    results = {}
    for _ in procs:
        rank, loss, metrics, grad = queue.get(timeout=120)  # a hang fails here instead of blocking CI
        results[rank] = (loss, metrics, grad)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    return results


def _reference(empty_rank, agreement):
    masks = [NO_STEPS if r == empty_rank else MASKS[r] for r in range(2)]
    logits = torch.tensor(LOGITS[0] + LOGITS[1], requires_grad=True)
    loss, metrics = spr_loss(logits, torch.tensor(OUTCOMES[0] + OUTCOMES[1]), torch.tensor(masks[0] + masks[1], dtype=torch.bool),
                             agreement=agreement)
    loss.backward()
    return loss.item(), metrics, logits.grad


@pytest.mark.parametrize("empty_rank, agreement", [(None, "sign"), (1, "sign"), (None, "centered")])
def test_two_ranks_match_single_process(empty_rank, agreement):
    # "centered": the mean logit the filter is centred on is the global one (both ranks' steps)
    results = _run(empty_rank, agreement)
    ref_loss, ref_metrics, ref_grad = _reference(empty_rank, agreement)
    assert results[0][0] == results[1][0]  # identical on both ranks
    assert results[0][0] == pytest.approx(ref_loss, rel=1e-6)
    for key in ("sprm/correct_score", "sprm/wrong_score", "sprm/kept_step_frac", "sprm/num_steps"):
        assert results[0][1][key] == results[1][1][key] == pytest.approx(ref_metrics[key], rel=1e-6)
    # Mean-reduced data parallelism averages rank gradients: (g0 + g1) / 2 on each rank's rows.
    world = 2
    for rank in range(2):
        torch.testing.assert_close(torch.tensor(results[rank][2]) / world, ref_grad[2 * rank : 2 * rank + 2])
