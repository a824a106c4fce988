"""``metastone infer``: sample K drafts per question, score them with the SPRM, record each draft once.

The original ``test/inference.py`` flags keep working: ``--task --input_file --output_file
--n_samples --branch --model_dir --score_api_url --response_api_url a,b,c --total_parts --part``
(K = n_samples x branch drafts per question). With servers (``--backend server``, the default when
URLs are given) drafts are spread over every policy URL and scored in batches by token ids.
``--backend vllm|hf`` runs both models in this process, no servers. Killed runs resume: rerun the
same command. Metrics are a separate pass: ``metastone metric`` / ``test/compute_metric.py``.
``--model``, ``--out`` and ``--head`` are the names every subcommand shares for ``--model_dir``,
``--output_file`` and ``--head_path``; each flag takes ``_`` or ``-`` between words.

``--strategy beam|mcts`` replaces the K drafts by SPRM-guided search (``metastone.search``,
``docs/search.md``): one searched trace per question, steps cut at the SPRM head's separators
(read from ``sprm_config.json`` in ``--head_path``, default the model folder), budgets
``--token_budget`` / ``--time_budget_s`` / ``--max_depth``. The default (``bon``) is unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import fields

from metastone.cli.flags import add_config_flags
from metastone.engines.factory import EngineConfig
from metastone.engines.http import SERVICE_WAIT_S
from metastone.harness.runner import RunConfig
from metastone.sampling import Sampling
from metastone.serve.vllm.cpu import add_kv_cache_argument

logger = logging.getLogger(__name__)


# search options that are flags (the rest come from the run: seed, sampling, stop strings, separators); each
# flag's type and help come from the strategies' config fields (metastone.search), its default is None: unset
# options take the strategy's own default
SEARCH_FLAGS = ("token_budget", "time_budget_s", "max_depth", "max_step_tokens", "expansions", "beam_width", "c_uct",
                "max_iterations", "widening", "max_children", "backup", "final", "aggregation")
# the sampling options that are flags, from metastone.sampling.Sampling (type, default and help)
SAMPLING_FLAGS = ("seed", "max_tokens", "temperature", "top_p", "repetition_penalty")


def add_search_flags(group) -> None:
    from metastone.search import STRATEGIES

    left = list(SEARCH_FLAGS)
    for strategy, (cls, _) in STRATEGIES.items():
        names = {f.name for f in fields(cls)}
        mine = [n for n in left if n in names]
        if not mine:
            continue
        others = [s for s, (c, _) in STRATEGIES.items() if s != "bon" and {f.name for f in fields(c)} >= set(mine)]
        prefix = "" if len(others) > 1 or strategy == "bon" else f"{strategy}: "
        helps = {f.name: prefix + f.metadata.get("help", "") for f in fields(cls) if f.name in mine}
        add_config_flags(group, cls, only=mine, defaults=dict.fromkeys(mine), helps=helps)
        left = [n for n in left if n not in mine]


def search_options(args, stop, separator_ids) -> dict:
    """The search config's options from the flags (validated by the strategy's config class)."""
    from metastone.search import make_config

    given = {name: getattr(args, name) for name in SEARCH_FLAGS if getattr(args, name) is not None}
    cfg = make_config(args.strategy, seed=args.seed, max_tokens=args.max_tokens, temperature=args.temperature,
                      top_p=args.top_p, repetition_penalty=args.repetition_penalty, stop=tuple(stop),
                      separator_ids=tuple(separator_ids), max_retries=args.max_retries, **given)
    return cfg.options()


def _check_strategy_flags(args) -> None:
    given = [name for name in SEARCH_FLAGS if getattr(args, name) is not None]
    if args.strategy == "bon":
        if given or args.head_path:
            extra = ["--" + n for n in given] + (["--head_path"] if args.head_path and args.backend == "server" else [])
            if extra:
                raise ValueError(f"{', '.join(extra)} apply to --strategy beam|mcts; the default Best-of-N run takes "
                                 "--n_samples/--branch. Add --strategy beam or mcts, or drop them.")
        return
    if args.n_samples * args.branch != 1:
        raise ValueError(f"--n_samples/--branch set the Best-of-N drafts ({args.n_samples} x {args.branch}); --strategy "
                         f"{args.strategy} searches one trace per question: bound it with --token_budget/--time_budget_s "
                         "and size it with --beam_width/--expansions instead.")


def make_parser(subparsers):
    p = subparsers.add_parser("infer", help="Best-of-N sampling + SPRM scoring into draft records", description=__doc__)
    p.add_argument("--task", required=True, help="aime24 | aime25 | ceval | livecodebench | humaneval | demo")
    p.add_argument("--input_file", "--input-file", dest="input_file", default=None, help="task data (default: bundled)")
    p.add_argument("--out", "--output_file", "--output-file", dest="output_file", required=True, help="draft records (JSONL)")
    p.add_argument("--n_samples", "--n-samples", dest="n_samples", type=int, default=1)
    p.add_argument("--branch", type=int, default=1, help="drafts per sample round; K = n_samples x branch")
    p.add_argument("--model", "--model_dir", "--model-dir", dest="model_dir", required=True, help="HF model folder (tokenizer, chat template; the models for local backends)")
    p.add_argument("--score_api_url", "--score-api-url", dest="score_api_url", default=None)
    p.add_argument("--response_api_url", "--response-api-url", dest="response_api_url", default=None, help="policy URLs, comma-separated")
    add_config_flags(p, EngineConfig, only=("backend",))
    add_config_flags(p, RunConfig, only=("total_parts", "part"))
    add_config_flags(p, Sampling, only=SAMPLING_FLAGS)
    p.add_argument("--chat_template", "--chat-template", dest="chat_template", choices=["auto", "on", "off"], default="auto",
                   help="apply the tokenizer's chat template to the task prompt (auto: the task decides)")
    # None: resolved per backend (metastone.harness.infer.IN_FLIGHT), not RunConfig's library defaults
    add_config_flags(p, RunConfig, only=("batch_size", "workers", "max_retries"), defaults={"batch_size": None, "workers": None},
                     helps={"batch_size": "drafts per batch (default: 128 vllm, 16 hf, 8 server; metastone.harness.infer.IN_FLIGHT)",
                            "workers": "batches in flight (default: 2 vllm, 1 hf, 2 per policy URL); with --strategy beam|mcts: "
                                       "questions searched side by side (default 8 local, 2 per policy URL), whose requests local "
                                       "engines merge into shared batches (--workers 1: no other question in a batch)"})
    add_config_flags(p, EngineConfig, only=("dtype", "device", "max_model_len", "gpu_memory_utilization"))
    add_kv_cache_argument(p)
    add_config_flags(p, EngineConfig, only=("score_while_generating", "api_key", "service_wait_s"))
    p.add_argument("--no_progress", "--no-progress", dest="no_progress", action="store_true")
    g = p.add_argument_group("search (--strategy beam|mcts; docs/search.md); unset options take the strategy's defaults")
    g.add_argument("--strategy", choices=["bon", "beam", "mcts"], default="bon",
                   help="bon: K = n_samples x branch drafts per question (default); beam / mcts: one SPRM-guided search per question")
    g.add_argument("--head", "--head_path", "--head-path", dest="head_path", default=None,
                   help="SPRM head folder/file (default: the model folder); its sprm_config.json names the step separators")
    add_search_flags(g)
    p.set_defaults(func=main)
    return p


def engine_config(args):
    """The engines the flags ask for (``metastone.engines.make_engines``)."""
    from metastone.engines import EngineConfig

    return EngineConfig(model_dir=args.model_dir, backend=args.backend,
                        response_api_urls=tuple(args.response_api_url.split(",")) if args.response_api_url else (),
                        score_api_url=args.score_api_url, api_key=args.api_key, dtype=args.dtype, device=args.device,
                        max_model_len=args.max_model_len, gpu_memory_utilization=args.gpu_memory_utilization,
                        kv_cache_gib=getattr(args, "kv_cache_gib", None), head_path=getattr(args, "head_path", None),
                        score_while_generating=getattr(args, "score_while_generating", False),
                        service_wait_s=getattr(args, "service_wait_s", SERVICE_WAIT_S))


async def _main(args) -> int:
    from transformers import AutoTokenizer

    from metastone.engines import ServiceDown, make_engines
    from metastone.eval.tasks import load_task
    from metastone.harness.infer import infer_async, run_config

    _check_strategy_flags(args)
    task = load_task(args.task, args.input_file)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    chat = {"on": True, "off": False}.get(args.chat_template)
    stop = tuple(getattr(task, "stop", ()) or ())
    search = None
    if args.strategy != "bon":
        from metastone.search import step_spec_for

        try:
            spec = step_spec_for(tokenizer, args.model_dir, args.head_path)
        except FileNotFoundError as exc:
            raise ValueError(f"{exc} Search cuts steps at the SPRM head's separators: pass --head_path (a head "
                             "folder with sprm_config.json, or score_module.pt for the paper's '.\\n\\n').") from None
        search = search_options(args, stop, spec.separator_ids)
    engine_cfg = engine_config(args)
    cfg = run_config(
        task, args.output_file, args.model_dir, args.n_samples * args.branch, backend=engine_cfg.resolved_backend(),
        n_urls=engine_cfg.n_urls(), chat_template=chat, batch_size=args.batch_size, workers=args.workers,
        seed=args.seed, max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
        repetition_penalty=args.repetition_penalty, total_parts=args.total_parts, part=args.part,
        max_retries=args.max_retries, **({"strategy": args.strategy, "search": search} if search else {}),
    )
    searcher = None
    if search is not None:
        from metastone.search import record_searcher

        def searcher(eng):
            return record_searcher(cfg.strategy, cfg.search, eng.generator, eng.scorer, tokenizer, stop)
    from tqdm import tqdm

    unit = "draft" if search is None else "question"
    progress = tqdm(unit=unit, disable=args.no_progress, file=sys.stderr, dynamic_ncols=True)
    try:
        # the engines are made only when drafts are missing (a finished run starts none) and closed by infer_async
        stats = await infer_async(cfg, task, tokenizer, lambda: make_engines(engine_cfg), progress=progress,
                                  searcher=searcher)
    except ServiceDown as exc:
        logger.error("stopped: %s", exc)
        return 1
    finally:
        progress.close()
        task.close()
    logger.info("%s: %d drafts written this run, %d in total (%d were already done)", args.output_file, stats.drafts_done,
                stats.total, stats.before)
    if stats.failures:
        for f in stats.failures:
            logger.error("failed: %s", f)
        logger.error("%d drafts failed; rerun the same command to retry them", len(stats.failures))
        return 1
    return 0


def main(args) -> int:
    return asyncio.run(_main(args))
