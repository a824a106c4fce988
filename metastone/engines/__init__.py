"""Generation and scoring engines: HTTP services or in-process models, behind one async interface.

All expose ``async generate(requests, sampling) -> [GenResult | Exception]`` or
``async score(sequences, prompt_lens) -> [TraceScore]``, and ``async close()``; a failure is
reported per draft, so a caller retries one draft alone, never its whole question. Servers get
token ids (never re-tokenized text): the policy is called on ``/v1/completions`` with the prompt's
ids and one seed per draft, the scorer on ``/score_ids`` with the ids the policy returned. The service
clients wait through outages (``http``: backoff up to ``--service_wait_s``, 600 s by default).

The harness (Best-of-N runs) and search (beam, MCTS) both stand on this layer; it imports neither.

- ``types``: ``DraftRequest``, ``Sampling``, ``GenResult``, ``ServiceDown`` (a service gone past the wait: stop the run)
- ``http``: ``ServerGenerator``, ``ServerScorer`` (the policy and scoring services)
- ``coalescer``: ``Coalescer`` (concurrent calls merged into one in-process batch)
- ``local``: ``LocalGenerator`` (HF or vLLM policy), ``LocalScorer`` (HF or vLLM scorer)
- ``factory``: ``EngineConfig``, ``make_engines(cfg) -> Engines`` (a generator and a scorer, ``close()``)
"""

from metastone.engines.coalescer import Coalescer
from metastone.engines.factory import EngineConfig, Engines, make_engines
from metastone.engines.http import ServerGenerator, ServerScorer, base_url
from metastone.engines.local import LocalGenerator, LocalScorer
from metastone.engines.types import DraftRequest, GenResult, Sampling, ServiceDown

__all__ = ["Coalescer", "DraftRequest", "EngineConfig", "Engines", "GenResult", "LocalGenerator", "LocalScorer",
           "Sampling", "ServerGenerator", "ServerScorer", "ServiceDown", "base_url", "make_engines"]
