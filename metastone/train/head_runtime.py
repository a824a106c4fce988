"""The trainable SPRM head next to an FSDP policy: module, own AdamW + schedule, DP sync, checkpoint files.

The head is deliberately NOT part of the FSDP module: verl streams ``module.state_dict()`` to the
rollout engine every step and its checkpoint merger rejects unknown keys, so the head lives beside
it, replicated on every data-parallel rank (it is at most 52M parameters, 0.2% of a 32B backbone).
Replication needs one gradient all-reduce (mean, matching FSDP's mean reduction that
``metastone.sprm.spr_loss`` is written for) before clipping; it runs on every rank at every step,
never behind a data-dependent branch, with zeros for a head that saw no step this step.

Checkpoint files, written beside verl's shards in ``global_step_N/actor/`` (rank 0, replicated):

- ``sprm_head.safetensors`` + ``sprm_config.json`` (``checkpoint.save_contents`` has ``model``): the
  exact files ``metastone.sprm.load_head`` and the scorers read;
- ``sprm_train_state.pt``: the head's AdamW state (``optimizer``) and lr schedule (``extra``), and
  the replay buffer and step counter (``extra``);
- ``sprm_feature_stats.safetensors`` (``model``, only with ``standardize_features``): the feature
  statistics and the head's weights before folding, so a resumed run continues bit for bit. The
  ``sprm_head.safetensors`` beside it holds the FOLDED head (``metastone.sprm.standardize``): the head
  on raw features that every scorer and the export read unchanged.

Small-scale options (``standardize_features``, ``replay_passes``, ``validation_file``; all off by
default): ``observe``/``logits`` standardize the features the engine hands over, ``record`` keeps
them for replay, and ``end_step`` (called once per training step, after its last mini-batch) freezes
the statistics, runs the replay passes and scores the validation set, returning their metrics.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from metastone.sprm import CONFIG_FILE, HEAD_FILE, SPRMConfig, SPRMHead, load_head, save_head, spr_loss
from metastone.sprm.standardize import FeatureStandardizer, fold_standardization
from metastone.train.config import SECTION, SPRMTrainConfig
from metastone.train.replay import ReplayBuffer, padded

logger = logging.getLogger(__name__)

STATE_FILE = "sprm_train_state.pt"
STATS_FILE = "sprm_feature_stats.safetensors"
STATE_FORMAT_VERSION = 1
HEAD_INIT_SEED = 1234


def lr_factor(step: int, warmup: int, total: int, kind: str, min_ratio: float) -> float:
    """Multiplier of the head lr after ``step`` scheduler steps: linear warmup, then constant or cosine."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, max(0.0, (step - warmup) / max(1, total - warmup)))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def group_size(group) -> int:
    return dist.get_world_size(group) if group is not None and dist.is_initialized() else 1


def initial_head(hidden_size: int, dropout: float = 0.5) -> SPRMHead:
    """The fresh head every training run starts from (fixed seed: the same on every rank and every
    run, whatever the global RNG has done; the global RNG is untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(HEAD_INIT_SEED)
        return SPRMHead(hidden_size, dropout=dropout)


class SPRMHeadRuntime:
    """Owns the head, its optimizer and scheduler; the engine calls it at fixed points of a step.

    Args:
        config: the run's ``actor_rollout_ref.sprm`` section.
        hidden_size: the backbone's hidden size d.
        device: where the head lives (the engine's device).
        total_steps: training steps (needed by the cosine schedule).
        dp_group: data-parallel process group the head is replicated over, or None.
    """

    def __init__(self, config: SPRMTrainConfig, hidden_size: int, *, device, total_steps: int = -1, dp_group=None):
        self.config = config
        self.head_config: SPRMConfig = config.head_config(hidden_size)
        if config.lr_scheduler_type == "cosine" and total_steps <= 0:
            raise ValueError(
                f"{SECTION}.lr_scheduler_type=cosine needs the number of training steps, but it is {total_steps}; "
                "set trainer.total_training_steps or use lr_scheduler_type=constant."
            )
        self.dp_group = dp_group
        self.head = self._build_head(hidden_size).to(device=device, dtype=torch.float32)
        self._broadcast_from_first_rank()
        self.optimizer = torch.optim.AdamW(
            self.head.parameters(), lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_factor(s, config.lr_warmup_steps, total_steps, config.lr_scheduler_type, config.min_lr_ratio),
        )
        self.last_grad_norm = 0.0
        self.skipped_steps = 0
        self.total_steps = total_steps
        # training steps ended (end_step calls); checkpointed with the schedule
        self.steps_done = 0
        self.standardizer = (FeatureStandardizer(hidden_size, config.standardize_steps, dp_group)
                             if config.standardize_features else None)
        self.replay = ReplayBuffer(config.replay_steps) if config.replay_passes > 0 else None
        self._valset = None

    def _build_head(self, hidden_size: int) -> SPRMHead:
        head = initial_head(hidden_size, self.config.dropout)
        if self.config.init_head_path:
            loaded, _ = load_head(self.config.init_head_path, hidden_size=hidden_size)
            head.load_state_dict(loaded.state_dict())
            logger.info("SPRM head initialised from %s", self.config.init_head_path)
        return head

    def _broadcast_from_first_rank(self) -> None:
        if group_size(self.dp_group) > 1:
            src = dist.get_global_rank(self.dp_group, 0)
            for p in self.head.parameters():
                dist.broadcast(p.data, src=src, group=self.dp_group)

    @property
    def device(self) -> torch.device:
        return self.head[0].weight.device

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def reduce_gradients(self) -> None:
        """Mean of the head gradients over the DP group (missing gradients count as zeros)."""
        params = list(self.head.parameters())
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        world = group_size(self.dp_group)
        if world > 1:
            flat = torch.cat([p.grad.reshape(-1) for p in params])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.dp_group)
            flat /= world
            offset = 0
            for p in params:
                n = p.numel()
                p.grad.copy_(flat[offset : offset + n].view_as(p))
                offset += n

    def step(self) -> float:
        """Reduce, clip to ``clip_grad``, step (skipped if the norm is not finite); returns the norm before clipping."""
        self.reduce_gradients()
        norm = torch.nn.utils.clip_grad_norm_(self.head.parameters(), max_norm=self.config.clip_grad)
        self.last_grad_norm = float(norm)
        if not math.isfinite(self.last_grad_norm):
            logger.warning("SPRM head grad norm is %s; skipping this head update.", self.last_grad_norm)
            self.skipped_steps += 1
            self.zero_grad()
        else:
            self.optimizer.step()
        return self.last_grad_norm

    # ---------------------------------------------------------------- features in, metrics out
    def observe(self, features: torch.Tensor) -> None:
        """Features about to be scored in training: they update the standardization estimate while it
        collects (a collective over the DP group: every rank calls this for every micro-batch)."""
        if self.standardizer is not None:
            self.standardizer.observe(features)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Step logits of raw features: the head on standardized features when that option is on."""
        if self.standardizer is not None:
            features = self.standardizer.apply(features)
        return self.head(features)

    def loss(self, step_logits: torch.Tensor, outcome: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """``spr_loss`` with this run's settings (positive weight, smoothing, agreement, aggregation) over
        the DP group: the one call of the training forward and of the replay passes."""
        cfg = self.config
        return spr_loss(step_logits, outcome, mask, pos_weight=cfg.pos_weight, count_smoothing=cfg.count_smoothing,
                        agreement=cfg.agreement, dp_group=self.dp_group, aggregation=cfg.aggregation)

    def record(self, features: torch.Tensor, rows: torch.Tensor, outcome: torch.Tensor, groups: torch.Tensor) -> None:
        """Keep each valid trajectory's step features (``features[i]`` is step ``i``, of trajectory
        ``rows[i]``) for the replay passes; labels 1 / 0 only (invalid ones are never replayed)."""
        if self.replay is None:
            return
        rows = rows.to("cpu")
        for r, y in enumerate(outcome.tolist()):
            if y in (0.0, 1.0):
                picked = features[(rows == r).to(features.device)]
                if len(picked):
                    self.replay.add(picked, y, int(groups[r]))

    def end_step(self) -> dict[str, float]:
        """After a training step's last mini-batch: freeze statistics, replay, validate. Returns metrics."""
        self.steps_done += 1
        if self.standardizer is not None:
            self.standardizer.end_step()
        metrics: dict[str, float] = {}
        if self.replay is not None:
            self.replay.end_step()
            metrics.update(self.replay_passes())
        if self.config.validation_file and (
            self.steps_done % self.config.validation_freq == 0 or self.steps_done == self.total_steps
        ):
            metrics.update(self.validate())
        return metrics

    def _rank(self) -> int:
        return dist.get_rank(self.dp_group) if group_size(self.dp_group) > 1 else 0

    def replay_passes(self) -> dict[str, float]:
        """``replay_passes`` head-only passes over the buffer (``replay_groups_per_update`` groups per
        AdamW step, the SPR loss as in training, dropout on). Every rank runs the same number of updates
        (the largest count over the DP group; a rank that has run out takes empty updates)."""
        cfg = self.config
        batches = []
        for p in range(cfg.replay_passes):
            seed = (self.steps_done * 1_000 + p) * 1_000 + self._rank()
            batches += self.replay.batches(cfg.replay_groups_per_update, seed)
        count = torch.tensor([len(batches)], dtype=torch.int64)
        if group_size(self.dp_group) > 1:
            dist.all_reduce(count, op=dist.ReduceOp.MAX, group=self.dp_group)
        self.head.train()
        losses, pos, neg, zero_pos = [], [], [], 0
        for i in range(int(count)):
            batch = batches[i] if i < len(batches) else []
            if batch:
                feats, rows, cols = padded(batch)
                feats, rows, cols = feats.to(self.device), rows.to(self.device), cols.to(self.device)
                labels = torch.tensor([t.label for t in batch], device=self.device)
                shape = (len(batch), int(cols.max()) + 1)
            else:  # an empty update on this rank: one masked-out dummy step keeps the collectives aligned
                feats = torch.zeros(1, self.head.hidden_size, device=self.device)
                rows = cols = torch.zeros(1, dtype=torch.long, device=self.device)
                labels, shape = torch.zeros(1, device=self.device), (1, 1)
            mask = torch.zeros(shape, dtype=torch.bool, device=self.device)
            if batch:
                mask[rows, cols] = True
            step_logits = torch.zeros(shape, device=self.device).index_put((rows, cols), self.logits(feats))
            self.zero_grad()
            loss, m = self.loss(step_logits, labels, mask)
            (cfg.loss_coef * loss).backward()
            self.step()
            losses.append(m["sprm/loss"])
            pos.append(m["sprm/num_pos"])
            neg.append(m["sprm/num_neg"])
            zero_pos += int(m["sprm/num_pos"] == 0 and m["sprm/num_correct"] > 0)
        if not losses:
            return {"sprm/replay_updates": 0.0, "sprm/replay_buffer": float(len(self.replay))}
        return {"sprm/replay_updates": float(len(losses)), "sprm/replay_buffer": float(len(self.replay)),
                "sprm/replay_loss": sum(losses) / len(losses), "sprm/replay_kept_pos": sum(pos) / len(pos),
                "sprm/replay_kept_neg": sum(neg) / len(neg), "sprm/replay_zero_pos_updates": float(zero_pos)}

    def validate(self) -> dict[str, float]:
        """The head in eval mode on the cached validation set (``metastone.train.head_validation``)."""
        from metastone.train.head_validation import ValidationSet, evaluate_head

        if self._valset is None:
            self._valset = ValidationSet.load(self.config.validation_file)
            if self._valset.hidden_size != self.head.hidden_size:
                raise ValueError(
                    f"{SECTION}.validation_file={self.config.validation_file}: features have d="
                    f"{self._valset.hidden_size}, the head d={self.head.hidden_size}; write it with this run's model."
                )
        was_training = self.head.training
        self.head.eval()
        try:
            return evaluate_head(self._valset, lambda f: self.logits(f.to(self.device)), self.config.aggregation)
        finally:
            self.head.train(was_training)

    def exported_head(self) -> SPRMHead:
        """The head on raw features (the standardization folded in): what checkpoints and scorers hold."""
        if self.standardizer is None:
            return self.head
        return fold_standardization(self.head, self.standardizer.mean, self.standardizer.std)

    def scheduler_step(self) -> float:
        self.scheduler.step()
        return self.current_lr()

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def to(self, device, *, model: bool = True, optimizer: bool = True) -> None:
        """Move the head (and its grads) and/or its optimizer state; AdamW's ``step`` counters stay on CPU."""
        if model:
            self.head.to(device)
        if optimizer:
            for state in self.optimizer.state.values():
                for key, value in state.items():
                    if torch.is_tensor(value) and key != "step":
                        state[key] = value.to(device)

    # ---------------------------------------------------------------- checkpoint files
    def state_digest(self) -> str:
        """sha256 (16 hex) of the head weights, AdamW state and schedule: equal digests = bit-identical state."""
        import hashlib

        digest = hashlib.sha256()

        def add(value) -> None:
            if isinstance(value, torch.Tensor):
                digest.update(value.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
            elif isinstance(value, dict):
                for key in sorted(value, key=str):
                    digest.update(str(key).encode())
                    add(value[key])
            elif isinstance(value, (list, tuple)):
                for item in value:
                    add(item)
            else:
                digest.update(repr(value).encode())

        add(self.head.state_dict())
        add(self.optimizer.state_dict()["state"])
        add(self.scheduler.state_dict().get("last_epoch"))
        add(self.steps_done)
        if self.standardizer is not None:
            add(self.standardizer.state_dict())
        if self.replay is not None:
            add(self.replay.state_dict())
        return digest.hexdigest()[:16]

    def save(self, directory: str | Path, contents) -> list[Path]:
        """Write the files selected by verl's ``checkpoint.save_contents`` (model / optimizer / extra)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        if "model" in contents:
            save_head(self.exported_head(), out, self.head_config, released_format=False)
            written += [out / HEAD_FILE, out / CONFIG_FILE]
            if self.standardizer is not None:
                stats = {f"stats.{k}": v.contiguous() for k, v in self.standardizer.state_dict().items()}
                stats.update({f"head.{k}": v.detach().to("cpu").contiguous() for k, v in self.head.state_dict().items()})
                save_file(stats, str(out / STATS_FILE))
                written.append(out / STATS_FILE)
        state = {"format_version": STATE_FORMAT_VERSION}
        if "optimizer" in contents:
            state["optimizer"] = self.optimizer.state_dict()
        if "extra" in contents:
            state["lr_scheduler"] = self.scheduler.state_dict()
            state["skipped_steps"] = self.skipped_steps
            state["steps_done"] = self.steps_done
            if self.replay is not None:
                state["replay"] = self.replay.state_dict()
        if len(state) > 1:
            torch.save(state, out / STATE_FILE)
            written.append(out / STATE_FILE)
        logger.info("SPRM head state saved to %s (digest %s)", out, self.state_digest())
        return written

    def load(self, directory: str | Path, contents) -> None:
        """Restore what ``save`` wrote, for the parts in verl's ``checkpoint.load_contents``."""
        src = Path(directory)
        if "model" in contents:
            file = src / HEAD_FILE
            if not file.is_file():
                raise ValueError(
                    f"{src}: no {HEAD_FILE} in this checkpoint, so the SPRM head cannot be resumed. It was saved "
                    f"without the head (not by metastone.train, or with {SECTION}.enable=false). Resume from a "
                    "metastone checkpoint, or drop 'model' from actor_rollout_ref.actor.checkpoint.load_contents."
                )
            saved = SPRMConfig.load(src / CONFIG_FILE) if (src / CONFIG_FILE).is_file() else None
            if saved is not None and (saved.hidden_size, saved.feature_layer) != (
                self.head_config.hidden_size, self.head_config.feature_layer
            ):
                raise ValueError(
                    f"{src / CONFIG_FILE}: the saved head reads layer {saved.feature_layer} with "
                    f"d={saved.hidden_size}, "
                    f"this run layer {self.head_config.feature_layer} with d={self.head_config.hidden_size}; "
                    f"resume with the same model and {SECTION}.feature_layer."
                )
            state = load_file(str(file))
            if self.standardizer is not None:
                stats_file = src / STATS_FILE
                if not stats_file.is_file():
                    raise ValueError(
                        f"{src}: no {STATS_FILE}, but this run has {SECTION}.standardize_features=true: the checkpoint "
                        "was saved without it, so its head reads raw features. Resume with standardize_features=false."
                    )
                saved = load_file(str(stats_file))
                self.standardizer.load_state_dict({k[6:]: v for k, v in saved.items() if k.startswith("stats.")})
                state = {k[5:]: v for k, v in saved.items() if k.startswith("head.")}
            self.head.load_state_dict({k: v.to(self.device) for k, v in state.items()})
        wants_state = "optimizer" in contents or "extra" in contents
        if wants_state:
            file = src / STATE_FILE
            if not file.is_file():
                raise ValueError(
                    f"{src}: no {STATE_FILE}; the head optimizer/schedule cannot be resumed. Drop 'optimizer' and "
                    "'extra' from actor_rollout_ref.actor.checkpoint.load_contents to resume the head weights only."
                )
            state = torch.load(file, map_location="cpu", weights_only=False)
            if state.get("format_version") != STATE_FORMAT_VERSION:
                raise ValueError(f"{file}: format_version {state.get('format_version')} != {STATE_FORMAT_VERSION}.")
            if "optimizer" in contents and "optimizer" in state:
                self.optimizer.load_state_dict(state["optimizer"])
                self.to(self.device, model=False, optimizer=True)
            if "extra" in contents and "lr_scheduler" in state:
                self.scheduler.load_state_dict(state["lr_scheduler"])
                self.skipped_steps = int(state.get("skipped_steps", 0))
                self.steps_done = int(state.get("steps_done", self.scheduler.last_epoch))
                if self.replay is not None and "replay" in state:
                    self.replay.load_state_dict(state["replay"])
        logger.info("SPRM head state restored from %s (digest %s)", src, self.state_digest())
