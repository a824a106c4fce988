"""``make_engines(cfg)``: the policy and the scorer a run drives, as services or in-process, and their shutdown."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from metastone.engines.http import SERVICE_WAIT_S

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    """Where drafts are generated and scored. Errors name the ``metastone infer`` flag that fixes them."""

    model_dir: str
    backend: str | None = field(default=None, metadata={"help": "default: server if URLs are given",
                                                          "choices": ("server", "vllm", "hf")})
    response_api_urls: tuple[str, ...] = ()  # policy services, drafts spread round-robin
    score_api_url: str | None = None
    api_key: str | None = field(default=None, metadata={"help": "bearer token for the services"})
    dtype: str = field(default="bfloat16", metadata={"help": "local backends"})
    device: str | None = field(default=None, metadata={"help": "hf backend device (default: cuda if available, else cpu)"})
    max_model_len: int | None = field(default=None, metadata={"help": "vllm backend"})
    gpu_memory_utilization: float = field(default=0.4, metadata={
        "help": "vllm backend: per engine (policy and scorer share the GPU)"})
    kv_cache_gib: float | None = None  # vllm backend, per engine, CPU only (None = auto)
    head_path: str | None = None  # SPRM head folder/file (default: the model folder)
    score_while_generating: bool = field(default=False, metadata={
        "help": "hf backend, or vllm on CPU: the policy applies the SPRM head as it decodes, so a draft is never run "
                "twice (same step scores as the separate scorer; docs/serving.md)"})
    service_wait_s: float = field(default=SERVICE_WAIT_S, metadata={
        "help": "servers: a request whose service is unreachable or answers 502/503/504 is sent again with backoff "
                "for up to this many seconds (default %(default)s), then the run stops with its records kept (rerun "
                "to resume)"})

    def __post_init__(self):
        if not self.service_wait_s >= 0:
            raise ValueError(f"--service_wait_s must be >= 0 (0: stop at the first outage), got {self.service_wait_s}.")

    def resolved_backend(self) -> str:
        """server | vllm | hf, checked against the other fields without starting anything."""
        backend = self.backend or ("server" if self.response_api_urls or self.score_api_url else None)
        if self.score_while_generating and backend not in ("vllm", "hf"):
            raise ValueError("--score_while_generating needs --backend vllm or hf (the policy and the head in this "
                             "process); with services, start serve-policy with --score_while_generating instead: its "
                             "drafts come back scored.")
        if backend is None:
            raise ValueError("give --response_api_url and --score_api_url (servers), or --backend vllm|hf (in-process).")
        if backend == "server" and (not self.policy_urls() or not self.score_api_url):
            raise ValueError("--backend server needs both --response_api_url (policy URLs) and --score_api_url.")
        return backend

    def policy_urls(self) -> list[str]:
        return [u for u in self.response_api_urls if u.strip()]

    def n_urls(self) -> int:
        """Policy services the drafts are spread over (1 for in-process engines)."""
        return len(self.policy_urls()) if self.resolved_backend() == "server" else 1


@dataclass
class Engines:
    backend: str  # the resolved one: server | vllm | hf
    generator: object
    scorer: object

    async def close(self) -> None:
        """Stop both engines (a vLLM engine's idle core busy-polls a CPU until it is shut down)."""
        await self.generator.close()
        await self.scorer.close()


class LazyScorer:
    """A scorer made on its first call: with scoring while generating, the policy scores every draft and the
    scorer (which scores what the policy did not: search paths, a draft whose step scores came back
    incomplete) is usually never needed, so its engine is not started until it is."""

    def __init__(self, make):
        self._make, self._scorer, self._lock = make, None, asyncio.Lock()

    async def score(self, sequences, prompt_lens):
        async with self._lock:
            if self._scorer is None:
                logger.info("starting the separate scorer (a request the policy did not score)")
                self._scorer = await asyncio.to_thread(self._make)
        return await self._scorer.score(sequences, prompt_lens)

    async def close(self) -> None:
        if self._scorer is not None:
            await self._scorer.close()


def make_engines(cfg: EngineConfig) -> Engines:
    from metastone.engines.http import ServerGenerator, ServerScorer
    from metastone.engines.local import LocalGenerator, LocalScorer

    backend = cfg.resolved_backend()
    if backend == "server":
        return Engines(backend, ServerGenerator(cfg.policy_urls(), cfg.model_dir, api_key=cfg.api_key,
                                                wait_s=cfg.service_wait_s),
                       ServerScorer(cfg.score_api_url, api_key=cfg.api_key, wait_s=cfg.service_wait_s))
    from metastone.devices import default_device, has_cuda

    head = {"head_path": cfg.head_path} if cfg.head_path else {}
    # with scoring while generating the scorer is made on first use only (LazyScorer)
    fused = {"score_while_generating": True, **head} if cfg.score_while_generating else {}
    if backend == "hf":
        from metastone.serve.hf.scorer import HFScorer

        device = default_device(cfg.device)
        def hf_scorer():
            return LocalScorer(HFScorer(cfg.model_dir, device=device, dtype=cfg.dtype, **head))

        return Engines(backend, LocalGenerator("hf", cfg.model_dir, dtype=cfg.dtype, device=device, **fused),
                       LazyScorer(hf_scorer) if fused else hf_scorer())
    from metastone.serve.vllm.scorer import VLLMScorer

    kw = {"max_model_len": cfg.max_model_len} if cfg.max_model_len else {}
    if has_cuda():
        kw["gpu_memory_utilization"] = cfg.gpu_memory_utilization
    kv = {"kv_cache_gib": cfg.kv_cache_gib}  # per engine, CPU only
    def vllm_scorer():
        return LocalScorer(VLLMScorer(cfg.model_dir, dtype=cfg.dtype, **kw, **kv, **head))

    return Engines(backend, LocalGenerator("vllm", cfg.model_dir, dtype=cfg.dtype, enforce_eager=not has_cuda(),
                                           **kw, **kv, **fused),
                   LazyScorer(vllm_scorer) if fused else vllm_scorer())
