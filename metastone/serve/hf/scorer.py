"""Hugging Face scoring backend: batched SPRM scores for lists of token ids (CPU, MPS or one GPU).

The reference implementation every other scorer is tested against. It never re-tokenizes: callers
hand in the token ids the policy produced. Sequences are sorted by length and packed into batches
under a token budget; each batch runs the backbone only up to the feature layer
(``metastone.sprm.extract_features``), step positions come from ``metastone.sprm.step_mask`` and
the trajectory score from ``metastone.sprm.aggregate``.

Scoring costs only what is new (``share_prefix``, on by default): sequences of one call that share a
prompt (Best-of-N: N drafts of one question) run their longest common prefix once, batch size 1, and
keep its KV cache and feature-layer states; each draft then runs only its own tokens, batched, on top
of that cache. With ``prefix_cache_mib`` the KV cache and states of every scored sequence (and shared
prompt) are also kept in a byte-bounded LRU keyed by token ids, so a later sequence that extends one
of them (a search node extending its parent's path, a prompt scored again) runs only its new tokens.
Both stop at the feature layer like the full prefill and give its scores within fp32 rounding.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from metastone.sprm import (
    SPRMConfig,
    aggregate_list,
    backbone_hidden_size,
    extract_features,
    locate_head,
    resolve_step_spec,
    step_mask,
    step_positions,
)

from metastone.sprm.features import backbone, layer_input_index
from metastone.serve.scoring import TraceScore, check_batch

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(DTYPES)}.")
    return DTYPES[name]


@dataclass(eq=False)
class _Prefix:
    """A scored token prefix: its KV cache up to the feature layer and its feature-layer states."""

    ids: tuple[int, ...]
    keys: list[torch.Tensor]  # per cached decoder layer, [kv_heads, T, head_dim]
    values: list[torch.Tensor]
    hidden: torch.Tensor  # [T, d]: the state the head reads, for every token

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values, self.hidden))


def _chain_hash(ids: Sequence[int]) -> list[int]:
    """``out[n - 1]`` is a hash of ``ids[:n]``: one pass for every prefix length."""
    out, h = [], 0
    for t in ids:
        h = hash((h, t))
        out.append(h)
    return out


class PrefixCache:
    """LRU of scored prefixes keyed by their token ids, bounded by the bytes of their tensors.

    ``lookup(ids)`` returns the longest stored prefix of ``ids`` (ids compared exactly, not only hashed).
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[tuple[int, int], _Prefix] = OrderedDict()
        self._lengths: dict[int, int] = {}  # stored prefix length -> how many entries have it

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()
        self._lengths.clear()
        self.bytes = 0

    def lookup(self, ids: Sequence[int]) -> _Prefix | None:
        lengths = sorted((n for n in self._lengths if n <= len(ids)), reverse=True)
        if lengths:
            hashes = _chain_hash(ids[: lengths[0]])
            for n in lengths:
                key = (n, hashes[n - 1])
                entry = self._items.get(key)
                if entry is not None and entry.ids == tuple(ids[:n]):
                    self._items.move_to_end(key)
                    self.hits += 1
                    return entry
        self.misses += 1
        return None

    def put(self, entry: _Prefix) -> None:
        size = entry.nbytes
        if not entry.ids or size > self.max_bytes:
            return
        key = (len(entry.ids), _chain_hash(entry.ids)[-1])
        if key in self._items:
            self._drop(key)
        self._items[key] = entry
        self._lengths[len(entry.ids)] = self._lengths.get(len(entry.ids), 0) + 1
        self.bytes += size
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._items)))

    def _drop(self, key) -> None:
        entry = self._items.pop(key)
        self.bytes -= entry.nbytes
        n = len(entry.ids)
        self._lengths[n] -= 1
        if not self._lengths[n]:
            del self._lengths[n]


def _common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for k in range(n):
        t = first[k]
        if any(s[k] != t for s in seqs):
            return k
    return n


class HFScorer:
    """Scores token-id sequences with an HF model folder and the SPRM head beside it.

    Args:
        model_dir: HF model folder with ``sprm_head.safetensors`` or ``score_module.pt`` beside the weights.
        head_path: a head file or folder elsewhere (default: ``model_dir``).
        device: torch device string.
        dtype: compute dtype of backbone and head (``float32``, ``bfloat16``, ``float16``).
        config: overrides the head's config (e.g. ``SPRMConfig.for_lang(d, "zh")``).
        max_batch_tokens: padded tokens per forward (batch size x longest sequence, or x longest new part
            when a prefix is reused).
        share_prefix: run the common prefix of sequences with the same prompt once per call and each
            sequence only over its own tokens (False: every sequence is a full prefill, as before).
        prefix_cache_mib: keep the KV caches of scored sequences in an LRU of this size (MiB; 0 = off) and
            continue later sequences from their longest cached prefix (search nodes from their parents).

    ``stats`` counts sequences, their tokens and the tokens actually run through the model.
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        head_path: str | Path | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        config: SPRMConfig | None = None,
        max_batch_tokens: int = 16384,
        lang: str | None = None,
        share_prefix: bool = True,
        prefix_cache_mib: float = 0.0,
    ):
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{model_dir}: not a Hugging Face model folder (no config.json).")
        if max_batch_tokens <= 0:
            raise ValueError(f"max_batch_tokens must be positive, got {max_batch_tokens}.")
        if not prefix_cache_mib >= 0:
            raise ValueError(f"prefix_cache_mib must be >= 0 (0 = no cache), got {prefix_cache_mib}.")
        self.device = torch.device(device)
        self.dtype = parse_dtype(dtype)
        hf_config = AutoConfig.from_pretrained(model_dir)
        if lang is not None and config is None:
            config = SPRMConfig.for_lang(backbone_hidden_size(hf_config), lang)
        self.head, self.config = locate_head(model_dir, head_path, hf_config=hf_config, dtype=self.dtype, config=config)
        self.head.to(self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.spec = resolve_step_spec(self.tokenizer, self.config.separators, self.config.think_tokens)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=self.dtype, attn_implementation="sdpa")
        self.model.to(self.device).eval()
        self.max_batch_tokens = max_batch_tokens
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.max_len = getattr(hf_config, "max_position_embeddings", None)
        self.vocab_size = self.model.get_input_embeddings().num_embeddings  # the ids the model reads (>= the tokenizer's)
        self.share_prefix = share_prefix
        self.prefix_cache = PrefixCache(int(prefix_cache_mib * 2**20)) if prefix_cache_mib > 0 else None
        self.stats = {"sequences": 0, "tokens": 0, "computed_tokens": 0}

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix (``prefix_cache_mib``), as ``VLLMScorer.reset_prefix_cache`` does."""
        if self.prefix_cache is not None:
            self.prefix_cache.clear()

    def _batches(self, lengths: Sequence[int]) -> list[list[int]]:
        order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
        batches, current = [], []
        for i in order:
            width = max([lengths[j] for j in current] + [lengths[i]])
            if current and width * (len(current) + 1) > self.max_batch_tokens:
                batches.append(current)
                current = []
            current.append(i)
        if current:
            batches.append(current)
        return batches

    @torch.no_grad()
    def score_ids(self, sequences: Sequence[Sequence[int]], prompt_lens: Sequence[int] | None = None) -> list[TraceScore]:
        """Score each token-id sequence; ``prompt_lens[i]`` leading tokens are prompt (default 0)."""
        prompt_lens = check_batch(sequences, prompt_lens, self.max_len)
        self.stats["sequences"] += len(sequences)
        self.stats["tokens"] += sum(len(s) for s in sequences)
        if self.share_prefix or self.prefix_cache is not None:
            return self._score_reusing(sequences, prompt_lens)
        self.stats["computed_tokens"] += sum(len(s) for s in sequences)
        return self._score_full(sequences, prompt_lens)

    def _score_full(self, sequences: Sequence[Sequence[int]], prompt_lens: list[int]) -> list[TraceScore]:
        """Every sequence a full prefill, in length-sorted padded batches."""
        lengths = [len(s) for s in sequences]
        results: list[TraceScore | None] = [None] * len(sequences)
        for batch in self._batches(lengths):
            width = max(lengths[i] for i in batch)
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            attn = torch.zeros_like(ids)
            resp = torch.zeros_like(ids, dtype=torch.bool)
            for row, i in enumerate(batch):
                ids[row, : lengths[i]] = torch.tensor(list(sequences[i]), dtype=torch.long)
                attn[row, : lengths[i]] = 1
                resp[row, prompt_lens[i] : lengths[i]] = True
            positions = (attn.cumsum(1) - 1).clamp_min(0)
            ids, attn, positions = ids.to(self.device), attn.to(self.device), positions.to(self.device)
            mask = step_mask(ids, resp.to(self.device), self.spec, attention_mask=attn)
            feats = extract_features(self.model, ids, attn, positions, self.config.feature_layer)
            probs = torch.zeros(mask.shape, dtype=torch.float32, device=self.device)
            if mask.any():
                probs[mask] = self.head.probs(feats[mask])
            for row, i in enumerate(batch):
                pos = mask[row].nonzero().flatten().tolist()
                scores = probs[row, pos].tolist()
                results[i] = TraceScore(aggregate_list(scores, self.config.aggregation), scores, pos, lengths[i])
        return results  # type: ignore[return-value]

    # -- prefix reuse -----------------------------------------------------------------------------
    def _forward(self, bases: list[_Prefix | None], tails: list[list[int]], keep: bool
                 ) -> list[tuple[torch.Tensor, _Prefix | None]]:
        """Run each tail (right-padded, one batch) on top of its row's base cache, up to the feature layer.

        Rows may have different bases (or none): the bases' KV are right-padded to the longest and the
        padding columns masked, and each tail's positions continue its own base, so every row sees
        exactly its own prefix. Returns per row its tail's feature-layer states ``[len, d]`` and, with
        ``keep``, the whole sequence (base + tail) as a ``_Prefix``.
        """
        from transformers import DynamicCache

        B, width = len(tails), max(len(t) for t in tails)
        P = [len(b) if b is not None else 0 for b in bases]
        p_max = max(P)
        ids = torch.full((B, width), self.pad_id, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for row, t in enumerate(tails):
            ids[row, : len(t)] = torch.tensor(t, dtype=torch.long)
            attn[row, : len(t)] = 1
        positions = (attn.cumsum(1) - 1).clamp_min(0) + torch.tensor(P, dtype=torch.long)[:, None]
        n_cached = layer_input_index(len(backbone(self.model).layers), self.config.feature_layer)
        cache = DynamicCache(config=self.model.config) if p_max > 0 or keep else None
        if p_max > 0:
            ref = next(b for b in bases if b is not None)
            for layer in range(n_cached):
                shape = (B, ref.keys[layer].shape[0], p_max, ref.keys[layer].shape[2])
                k = ref.keys[layer].new_zeros(shape)
                v = ref.values[layer].new_zeros(shape)
                for row, b in enumerate(bases):
                    if b is not None:
                        k[row, :, : P[row]] = b.keys[layer]
                        v[row, :, : P[row]] = b.values[layer]
                cache.update(k, v, layer)
            past = torch.zeros(B, p_max, dtype=attn.dtype)
            for row, n in enumerate(P):
                past[row, :n] = 1
            attn = torch.cat([past, attn], dim=1)
        feats = extract_features(self.model, ids.to(self.device), attn.to(self.device), positions.to(self.device),
                                 self.config.feature_layer, past_key_values=cache)
        out = []
        for row, (b, t) in enumerate(zip(bases, tails)):
            hidden = feats[row, : len(t)]
            entry = None
            if keep:
                n = len(t)
                layers = cache.layers[:n_cached]
                keys = [torch.cat([lay.keys[row, :, : P[row]], lay.keys[row, :, p_max : p_max + n]], dim=1) for lay in layers]
                values = [torch.cat([lay.values[row, :, : P[row]], lay.values[row, :, p_max : p_max + n]], dim=1)
                          for lay in layers]
                full = hidden.clone() if b is None else torch.cat([b.hidden, hidden])
                entry = _Prefix((b.ids if b is not None else ()) + tuple(t), keys, values, full)
            out.append((hidden, entry))
        return out

    def _run_tails(self, bases: list[_Prefix | None], seqs: list[list[int]], keep: bool):
        """Forward every sequence past its base, in padded batches under the token budget.

        Returns per sequence (new states or None when fully cached, tokens run, entry or None)."""
        out: list = [(None, 0, None)] * len(seqs)
        todo = [i for i, (b, s) in enumerate(zip(bases, seqs)) if b is None or len(b) < len(s)]
        tails = {i: seqs[i][len(bases[i]) if bases[i] is not None else 0:] for i in todo}
        for batch in self._batches([len(tails[i]) for i in todo]):
            rows = [todo[j] for j in batch]
            got = self._forward([bases[i] for i in rows], [tails[i] for i in rows], keep)
            for i, (hidden, entry) in zip(rows, got):
                out[i] = (hidden, len(tails[i]), entry)
                if entry is not None and self.prefix_cache is not None:
                    self.prefix_cache.put(entry)
        return out

    def _score_reusing(self, sequences: Sequence[Sequence[int]], prompt_lens: list[int]) -> list[TraceScore]:
        seqs = [[int(t) for t in s] for s in sequences]
        n = len(seqs)
        cache = self.prefix_cache
        bases: list[_Prefix | None] = [cache.lookup(s) for s in seqs] if cache is not None else [None] * n
        shared_cost: list[tuple[int, list[int]]] = []
        if self.share_prefix:
            # sequences with the same prompt: their longest common prefix runs once (all such prefixes
            # of this call in one batched forward), then each sequence continues from it
            groups: dict[tuple[int, ...], list[int]] = {}
            for i, (s, p) in enumerate(zip(seqs, prompt_lens)):
                if p > 0:
                    groups.setdefault(tuple(s[:p]), []).append(i)
            shared: list[tuple[list[int], list[int]]] = []  # (prefix ids, members)
            for members in groups.values():
                if len(members) < 2:
                    continue
                k = _common_prefix_len([seqs[m] for m in members])
                if any(bases[m] is None or len(bases[m]) < k for m in members):
                    shared.append((seqs[members[0]][:k], members))
            if shared:
                prefixes = [ids for ids, _ in shared]
                pre_bases = [cache.lookup(ids) if cache is not None else None for ids in prefixes]
                got = self._run_tails(pre_bases, prefixes, keep=True)
                for (ids, members), base, (_, ran, entry) in zip(shared, pre_bases, got):
                    self.stats["computed_tokens"] += ran
                    prefix = entry if entry is not None else base
                    users = [m for m in members if bases[m] is None or len(bases[m]) < len(ids)]
                    for m in users:
                        bases[m] = prefix
                    shared_cost.append((ran, users))
        got = self._run_tails(bases, seqs, keep=cache is not None)
        computed = [float(ran) for _, ran, _ in got]
        self.stats["computed_tokens"] += sum(computed)
        for ran, members in shared_cost:  # a shared prefix's tokens are split evenly among the sequences using it
            for m in members:
                computed[m] += ran / len(members)
        rows, where = [], []
        for i, s in enumerate(seqs):
            pos = step_positions(s, prompt_lens[i], self.spec)
            P = len(bases[i]) if bases[i] is not None else 0
            for p in pos:
                rows.append(bases[i].hidden[p] if p < P else got[i][0][p - P])
            where.append(pos)
        probs = self.head.probs(torch.stack(rows)).float().tolist() if rows else []
        results, k = [], 0
        for i, pos in enumerate(where):
            scores = probs[k : k + len(pos)]
            k += len(pos)
            results.append(TraceScore(aggregate_list(scores, self.config.aggregation), scores, pos, computed[i]))
        return results

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` as written (special-token strings in it are parsed, none are added)."""
        return self.tokenizer.encode(text, add_special_tokens=False)

    def score_text(self, text: str, prompt: str | None = None) -> dict:
        """The original ``/score`` contract for one trace: value, all_scores, token_ids, score_positions.

        With ``prompt``, the trace is ``prompt + text`` and only ``text``'s tokens are the response.
        """
        if not text:
            raise ValueError("text is empty; nothing to score.")
        prompt_ids = self.encode(prompt) if prompt else []
        ids = prompt_ids + self.encode(text)
        result = self.score_ids([ids], [len(prompt_ids)])[0]
        return {**result.as_dict(), "token_ids": ids}
