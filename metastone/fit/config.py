"""``FitConfig``: every option of ``metastone train-sprm``, validated up front."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from metastone.sampling import FIT_SAMPLING, Sampling
from metastone.sprm.config import HEAD_OPTIONS, SPRMConfig, head_field
from metastone.sprm.loss import INVALID_OUTCOMES

# Options that change the sampled drafts or the extracted features: a resumed run must agree on them.
DATA_FIELDS = ("model", "data", "task", "n_drafts", "questions", "seed", "max_tokens", "temperature", "top_p",
               "repetition_penalty", "separators", "think_tokens", "feature_layer", "feature_dtype")


@dataclass(frozen=True)
class FitConfig:
    model: str = field(metadata={"help": "HF model folder of the frozen policy ('demo': the embedded SmolLM2)"})
    task: str = field(metadata={"help": "task name (its grader labels the drafts)"})
    out: str = field(metadata={"help": "output folder (all stages, resumable)"})
    data: str | None = field(default=None, metadata={"help": "training questions (default: the task's train data)"})
    n_drafts: int = field(default=8, metadata={"help": "drafts sampled per question"})
    questions: int = field(default=0, metadata={"help": "use the first N questions (0: all)"})
    backend: str = field(default="vllm", metadata={"help": "sampling backend", "choices": ("vllm", "hf")})
    seed: int = field(default=0, metadata={"help": "seed of sampling, split, init and shuffling"})
    # Sampling of the drafts: metastone.sampling.FIT_SAMPLING (short drafts, temperature 0.7, no repetition
    # penalty, as the shipped demo head was fitted), not the paper's evaluation defaults (Sampling()).
    max_tokens: int = field(default=FIT_SAMPLING.max_tokens, metadata={"help": "max new tokens per draft"})
    temperature: float = field(default=FIT_SAMPLING.temperature, metadata={"help": "sampling temperature"})
    top_p: float = field(default=FIT_SAMPLING.top_p, metadata={"help": "nucleus sampling"})
    repetition_penalty: float = field(default=FIT_SAMPLING.repetition_penalty, metadata={"help": "1 = off"})
    separators: tuple[str, ...] = head_field("separators", "step separator strings (one token each)")
    # offline fitting serves models without a think span (the demo's SmolLM2): the whole response by default
    think_tokens: tuple[str, str] | None = field(default=None, metadata={"help": "(start, end), or None: whole response"})
    feature_layer: int = head_field("feature_layer")
    feature_dtype: str = field(default="float32", metadata={"help": "dtype of the frozen backbone for features",
                                                            "choices": ("float32", "bfloat16", "float16")})
    aggregation: str = head_field("aggregation")
    dropout: float = head_field("dropout")
    heldout_frac: float = field(default=0.2, metadata={"help": "fraction of questions held out"})
    epochs: int = field(default=100, metadata={"help": "most passes over the training drafts"})
    batch_size: int = field(default=64, metadata={"help": "drafts per optimizer step"})
    lr: float = field(default=3e-4, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    pos_weight: float = field(default=1.5, metadata={"help": "extra weight of positive steps (the SPR loss's)"})
    invalid_outcome: str = field(default="negative", metadata={
        "help": "drafts cut at --max-tokens before answering: negative (trained as wrong, as the original) | exclude",
        "choices": INVALID_OUTCOMES})
    standardize: bool = field(default=True, metadata={"help": "train on standardized features, fold into the head "
                                                              "(--no-standardize: raw features)"})
    patience: int = field(default=20, metadata={"help": "epochs without held-out AUROC gain before stopping"})
    feature_batch: int = field(default=16, metadata={"help": "drafts per feature forward pass"})
    shard_questions: int = field(default=32, metadata={"help": "questions per feature shard"})
    link_model: bool = field(default=True, metadata={"help": "link the model's files into --out, a ready model folder "
                                                             "(--no-link-model: only the head files)"})
    plot: bool = field(default=False, metadata={"help": "draw fit_curves.png"})

    def __post_init__(self):
        positive = {"n_drafts": self.n_drafts, "max_tokens": self.max_tokens, "epochs": self.epochs,
                    "batch_size": self.batch_size, "feature_batch": self.feature_batch,
                    "shard_questions": self.shard_questions, "patience": self.patience}
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"train-sprm: --{name.replace('_', '-')} must be a positive integer, got {value!r}.")
        if self.n_drafts < 2:
            raise ValueError("train-sprm: --n-drafts must be >= 2: the head learns from correct vs wrong drafts of a question.")
        if self.questions < 0:
            raise ValueError(f"train-sprm: --questions must be >= 0 (0 = all), got {self.questions}.")
        if self.backend not in ("vllm", "hf"):
            raise ValueError(f"train-sprm: --backend must be 'vllm' or 'hf', got {self.backend!r}.")
        if not 0.0 < self.heldout_frac < 1.0:
            raise ValueError(f"train-sprm: --heldout-frac must be in (0, 1), got {self.heldout_frac}.")
        try:
            Sampling.of(self).check()
        except ValueError as exc:
            raise ValueError(f"train-sprm: --{exc}") from None
        if self.lr <= 0 or self.weight_decay < 0 or self.pos_weight <= 0:
            raise ValueError("train-sprm: need --lr > 0, --weight-decay >= 0 and --pos-weight > 0.")
        if self.feature_dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"train-sprm: --feature-dtype must be float32, bfloat16 or float16, got {self.feature_dtype!r}.")
        # the head options, validated (and normalised: lists -> tuples) by SPRMConfig itself, up front;
        # the hidden size is the model's, read after sampling (a placeholder here)
        head = self.head_config(1)
        for key in HEAD_OPTIONS:
            object.__setattr__(self, key, getattr(head, key))
        if self.invalid_outcome not in INVALID_OUTCOMES:
            raise ValueError(f"train-sprm: --invalid-outcome must be one of {', '.join(INVALID_OUTCOMES)}, "
                             f"got {self.invalid_outcome!r}.")

    def head_config(self, hidden_size: int) -> SPRMConfig:
        """The ``SPRMConfig`` saved beside the fitted head, for a backbone of ``hidden_size``."""
        return SPRMConfig.checked(lambda key: f"train-sprm: --{key.replace('_', '-')}", hidden_size=hidden_size,
                                  **{key: getattr(self, key) for key in HEAD_OPTIONS})

    def data_content(self) -> dict:
        data = asdict(self)
        return {k: list(data[k]) if isinstance(data[k], tuple) else data[k] for k in DATA_FIELDS}

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
