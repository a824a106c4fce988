"""Hugging Face policy backend: batched sampling with one seed per draft, for machines without vLLM.

Each draft gets its own ``torch.Generator`` seeded with its seed, so a draft's tokens do not depend
on which other drafts share its batch (up to float rounding of padded batches): a resumed run
regenerates a missing draft with the same seed and gets the same text. Prompts are left-padded and
decoded together with a KV cache; sampling applies temperature and top-p; a draft stops at EOS, at
a stop token id (kept in ``token_ids``, excluded from the text, like vLLM's ``stop_token_ids``), at a
stop string (excluded from the text, like vLLM) or at ``max_tokens``. Stop token ids are checked
before stop strings, as vLLM does; ``stop_reason`` says which one fired (None for EOS). ``repetition_penalty``
follows the HF/vLLM rule over prompt and output tokens (positive logits divided, negative multiplied).

``attach_head`` scores while generating: a forward pre-hook on the decoder layer whose input is the
head's feature (``sprm/features.py``) keeps the last position's state of every decoding forward, and
the head turns it into that token's probability, so each ``Draft`` carries ``token_probs`` (one per
token; the last token's is NaN when no later forward ran it, as it is never a step's row) without a
second pass over the draft. The sampled tokens are the same with or without the head.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from metastone.sampling import Sampling
from metastone.serve.hf.scorer import parse_dtype

logger = logging.getLogger(__name__)


@dataclass
class Draft:
    """One sampled continuation."""

    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (EOS, stop token id or stop string) or "length"
    seed: int | None
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it; None for EOS/length
    token_probs: list[float] | None = None  # the SPRM head's probability per token (``HFPolicy.attach_head``)


class HFPolicy:
    """Samples drafts from an HF causal LM folder."""

    def __init__(self, model_dir: str | Path, *, device: str = "cpu", dtype: str = "float32", max_batch: int = 16,
                 max_len: int | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{model_dir}: not a Hugging Face model folder (no config.json).")
        self.model_dir = model_dir
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=parse_dtype(dtype)).to(self.device).eval()
        self.max_batch = max_batch
        self.vocab_size = self.model.get_input_embeddings().num_embeddings
        eos = self.model.generation_config.eos_token_id or self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        # the context: the model's positions, or less when asked (``--max_model_len``, as for vLLM)
        model_len = getattr(self.model.config, "max_position_embeddings", None)
        self.max_len = min(n for n in (model_len, max_len) if n) if (model_len or max_len) else None
        self.head = None  # attach_head
        self._feature: torch.Tensor | None = None

    def attach_head(self, head_path: str | Path | None = None):
        """Score while generating with the SPRM head in ``head_path`` (default: the model folder); returns
        the head's ``SPRMConfig`` (separators, aggregation) for turning ``Draft.token_probs`` into step scores."""
        from metastone.sprm import locate_head
        from metastone.sprm.features import backbone, layer_input_index

        if self.head is not None:
            raise ValueError("a head is already attached to this policy.")
        head, config = locate_head(self.model_dir, head_path, hf_config=self.model.config, dtype=self.model.dtype)
        layers = backbone(self.model).layers
        layer = layers[layer_input_index(len(layers), config.feature_layer)]

        def keep_last(_module, args, kwargs):
            hidden_states = args[0] if args else kwargs["hidden_states"]
            self._feature = hidden_states[:, -1, :]

        layer.register_forward_pre_hook(keep_last, with_kwargs=True)
        self.head = head.to(self.device)
        return config

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def generate(self, prompts: Sequence[Sequence[int]], seeds: Sequence[int | None], sampling: Sampling) -> list[Draft]:
        """One draft per (prompt, seed) pair, in order (``sampling.seed`` is not read: each draft has its own)."""
        sampling.check()
        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds.")
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"prompt {i} is empty.")
            if self.max_len and len(p) + sampling.max_tokens > self.max_len:
                raise ValueError(
                    f"prompt {i} has {len(p)} tokens; with max_tokens={sampling.max_tokens} it exceeds the "
                    f"model's context of {self.max_len}."
                )
        drafts: list[Draft] = []
        for start in range(0, len(prompts), self.max_batch):
            drafts += self._generate_batch(prompts[start : start + self.max_batch], seeds[start : start + self.max_batch], sampling)
        return drafts

    @torch.no_grad()
    def _generate_batch(self, prompts, seeds, sampling: Sampling) -> list[Draft]:
        batch = len(prompts)
        width = max(len(p) for p in prompts)
        ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for row, p in enumerate(prompts):
            ids[row, width - len(p):] = torch.tensor(list(p))
            attn[row, width - len(p):] = 1
        ids, attn = ids.to(self.device), attn.to(self.device)
        gens = []
        for seed in seeds:
            g = torch.Generator(device="cpu")
            g.manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
            gens.append(g)
        out_ids: list[list[int]] = [[] for _ in range(batch)]
        done = [False] * batch
        reasons = ["length"] * batch
        texts = [""] * batch
        stopped_by_string = [False] * batch
        stop_reasons: list[int | str | None] = [None] * batch
        stop_ids = set(sampling.stop_token_ids)
        probs: list[list[float]] = [[] for _ in range(batch)]  # the head's, while one is attached
        past = None
        step_input, positions = ids, (attn.cumsum(1) - 1).clamp_min(0)
        for _ in range(sampling.max_tokens):
            out = self.model(input_ids=step_input, attention_mask=attn, position_ids=positions, past_key_values=past, use_cache=True)
            past = out.past_key_values
            if self.head is not None:  # this forward's input is each row's last sampled token (or the prompt)
                p = self.head.probs(self._feature).cpu().tolist()
                for row in range(batch):
                    if len(probs[row]) < len(out_ids[row]):
                        probs[row].append(p[row])
            logits = out.logits[:, -1, :].float().cpu()
            if sampling.repetition_penalty != 1.0:
                for row in range(batch):
                    seen = torch.tensor(sorted(set(prompts[row]) | set(out_ids[row])), dtype=torch.long)
                    vals = logits[row, seen]
                    logits[row, seen] = torch.where(vals > 0, vals / sampling.repetition_penalty, vals * sampling.repetition_penalty)
            next_tokens = [self._sample(logits[row], sampling, gens[row]) if not done[row] else self.pad_id for row in range(batch)]
            for row, tok in enumerate(next_tokens):
                if done[row]:
                    continue
                if tok in self.eos_ids:
                    done[row], reasons[row] = True, "stop"
                    continue
                out_ids[row].append(tok)
                if tok in stop_ids:
                    texts[row] = self.tokenizer.decode(out_ids[row][:-1], skip_special_tokens=False)
                    done[row], reasons[row], stop_reasons[row], stopped_by_string[row] = True, "stop", tok, True
                    continue
                if sampling.stop:
                    text = self.tokenizer.decode(out_ids[row], skip_special_tokens=False)
                    hits = sorted((text.find(s), i) for i, s in enumerate(sampling.stop) if s in text)
                    if hits:
                        hit, which = hits[0]
                        texts[row], done[row], reasons[row] = text[:hit], True, "stop"
                        stopped_by_string[row], stop_reasons[row] = True, sampling.stop[which]
            if all(done):
                break
            step_input = torch.tensor(next_tokens, device=self.device)[:, None]
            attn = torch.cat([attn, torch.ones((batch, 1), dtype=attn.dtype, device=self.device)], dim=1)
            positions = positions[:, -1:] + 1
        drafts = []
        for row in range(batch):
            # Like vLLM: a stop string / stop token is cut from the text; the token ids keep every sampled token.
            text = texts[row] if stopped_by_string[row] else self.tokenizer.decode(out_ids[row], skip_special_tokens=False)
            token_probs = probs[row] + [float("nan")] * (len(out_ids[row]) - len(probs[row])) if self.head is not None else None
            drafts.append(Draft(text, out_ids[row], reasons[row], seeds[row], stop_reasons[row], token_probs))
        return drafts

    @staticmethod
    def _sample(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> int:
        if sampling.temperature == 0:
            return int(logits.argmax())
        probs = torch.softmax(logits / sampling.temperature, dim=-1)
        if sampling.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            keep = sorted_probs.cumsum(0) - sorted_probs < sampling.top_p
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
        return int(torch.multinomial(probs, 1, generator=generator))
