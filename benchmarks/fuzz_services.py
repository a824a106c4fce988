"""Bounded fuzz of the HTTP services: malformed requests must get a 4xx naming the field, never a 5xx or a hang.

    python benchmarks/fuzz_services.py --backend hf              # both services, HF backends
    python benchmarks/fuzz_services.py --backend vllm --json out.json

Starts ``serve-score`` and ``serve-policy`` on loopback (a tiny random Qwen2 with the real Qwen
tokenizer, built in a temp dir; the policy's context is ``--context`` tokens so that accepted
generations stay cheap), then sends ``--requests`` requests to each route (``/score``,
``/score_ids``, ``/generate``, ``/v1/completions``) from ``--clients`` concurrent clients: broken
JSON, bodies that are not objects, wrong types, missing and unknown fields, empty and over-long
inputs, token ids outside the vocabulary, negative or huge numbers, the wrong content type. One
request in ten is a good one, whose answer is checked against the answer before the fuzz. Each
request has a ``--timeout_s`` deadline (past it: a hang). The services' memory (RSS of the process
tree) is sampled after every eighth of each route's requests (``rss_mb_series``); ``--routes`` picks routes.
Only 127.0.0.1 is contacted; counts and time are bounded by the flags.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metastone.serve.http.process import ServiceProcess  # noqa: E402

PROMPT = "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n<think>\n"
RESPONSE = "First add.\n\nThen check.\n\n</think>\nThe answer is 5."
WRONG_VALUES = [[], {}, "x", None, True, 1.5, -1, [[-1]], ["a"], 10**30]


ROUTES = ("/score", "/score_ids", "/generate", "/v1/completions")


def routes(model: str, ids: list[int], plen: int, vocab: int) -> dict:
    """route -> (good body, main input field, numeric fields)."""
    return {
        "/score": ({"text": PROMPT + RESPONSE, "return_all_scores": True}, "text", []),
        "/score_ids": ({"sequences": [ids], "prompt_lens": [plen]}, "sequences", []),
        "/generate": ({"prefix_prompt": PROMPT, "max_tokens": 8, "response_num": 2, "temperature": 0.0, "seed": 1,
                       "stop": []}, "prefix_prompt", ["max_tokens", "response_num", "seed", "temperature", "top_p"]),
        "/v1/completions": ({"model": model, "prompt": PROMPT, "max_tokens": 8, "temperature": 0.0, "seed": 1},
                            "prompt", ["max_tokens", "n", "seed", "temperature", "top_p"]),
    }


def mutate(rng: random.Random, good: dict, main: str, numeric: list[str], vocab: int) -> tuple[str, bytes, str, str]:
    """(kind, body, content type, the field a 4xx should name)."""
    body = dict(good)
    kind = rng.choice(["broken_json", "not_object", "wrong_type", "missing", "unknown", "empty", "overlong",
                       "bad_ids", "numbers", "content_type"])
    ctype, field = "application/json", main
    if kind == "broken_json":
        text = json.dumps(body)
        return kind, text[: rng.randint(1, len(text) - 1)].encode(), ctype, "json"
    if kind == "not_object":
        return kind, rng.choice([b"[1, 2]", b"null", b'"text"', b"42", b""]), ctype, "body"
    if kind == "wrong_type":
        field = rng.choice(list(body))
        body[field] = rng.choice(WRONG_VALUES)
    elif kind == "missing":
        body.pop(main)
    elif kind == "unknown":
        field = "bogus_field"
        body[field] = 1
    elif kind == "empty":
        body[main] = "" if isinstance(good[main], str) else rng.choice([[], [[]]])
    elif kind == "overlong":
        body[main] = "word " * 40000 if isinstance(good[main], str) else [good[main][0] * 400]
    elif kind == "bad_ids":
        bad = rng.choice([vocab, 10**9, -1, 2**63])
        if isinstance(good[main], str):
            body[main] = [bad, 1, 2]
        else:
            body[main] = [good[main][0][:-1] + [bad]]
    elif kind == "numbers":
        if not numeric:
            field = "return_all_scores" if "return_all_scores" in body else "prompt_lens"
            body[field] = rng.choice([-1, 10**9, [10**9]])
        else:
            field = rng.choice(numeric)
            body[field] = rng.choice([-1, 0, 10**9, 2**70, -(2**70), float("1e308")])
    elif kind == "content_type":
        ctype = rng.choice(["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
        field = "body"
    return kind, json.dumps(body).encode(), ctype, field


async def fuzz_route(url: str, route: str, spec: tuple, vocab: int, n: int, clients: int, timeout_s: float,
                     check_good, service, seed: int) -> dict:
    import httpx

    good, main, numeric = spec
    rng = random.Random(seed)
    plan = []
    for i in range(n):
        if i % 10 == 9:
            plan.append(("good", json.dumps(good).encode(), "application/json", ""))
        else:
            plan.append(mutate(rng, good, main, numeric, vocab))
    sem = asyncio.Semaphore(clients)
    stats: Counter = Counter()
    examples: dict[str, str] = {}
    rss = []
    # a new connection per request: a pooled keep-alive connection that the server closes while idle
    # (uvicorn: after 5 s) would fail the next request on it, a client artifact that hides real ones
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client:

        async def one(kind, body, ctype, field):
            async with sem:
                try:
                    resp = await client.post(route, content=body, headers={"content-type": ctype})
                except httpx.TimeoutException:
                    stats["hang"] += 1
                    return
                except httpx.HTTPError as exc:
                    stats["connection_error"] += 1
                    examples.setdefault(f"connection_error {kind}", f"{ctype} {body[:120]!r}: {exc!r}"[:300])
                    return
            code = resp.status_code
            if kind == "good":
                ok = code == 200 and check_good(route, resp.json())
                stats["good_ok" if ok else "good_wrong"] += 1
                if not ok:
                    examples.setdefault("good_wrong", f"{code} {resp.text[:300]}")
                return
            if code >= 500:
                stats["5xx"] += 1
                examples.setdefault(f"5xx {kind}", f"{code} {body[:120]!r} -> {resp.text[:300]}")
            elif code >= 400:
                stats["4xx"] += 1
                # the mutated field, or another field of the same request that is wrong too (e.g. prompt_lens
                # no longer matching a mutated sequence)
                try:
                    sent = json.loads(body)
                except ValueError:
                    sent = None
                names = {field} | (set(sent) if isinstance(sent, dict) else set())
                named = any(f.lower() in resp.text.lower() for f in names)
                stats["4xx_field_named" if named else "4xx_field_not_named"] += 1
                if not named:
                    examples.setdefault(f"unnamed {kind}", f"{code} field {field}: {body[:120]!r} -> {resp.text[:300]}")
            else:
                stats["2xx_accepted"] += 1  # e.g. a huge max_tokens clamped to the context, an int for a float

        start_t = time.monotonic()
        # memory after every eighth of the requests: a warm-up levels off, a leak keeps climbing
        cuts = sorted({n * k // 8 for k in range(1, 9)})
        done = 0
        for cut in cuts:
            await asyncio.gather(*(one(*p) for p in plan[done:cut]))
            rss.append(round(service.rss_mb(), 1))
            done = cut
        # after the fuzz: good requests still answered correctly
        after = await asyncio.gather(*(client.post(route, json=good) for _ in range(5)))
        stats["good_after_ok"] = sum(r.status_code == 200 and check_good(route, r.json()) for r in after)
    return {"route": route, "requests": n, "seconds": round(time.monotonic() - start_t, 1), **stats,
            "rss_mb_after_half": rss[len(rss) // 2 - 1] if len(rss) > 1 else rss[0], "rss_mb_after_all": rss[-1],
            "rss_mb_series": rss, "examples": examples}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=["hf", "vllm"], default="hf")
    p.add_argument("--requests", type=int, default=1000, help="per route")
    p.add_argument("--clients", type=int, default=200, help="concurrent clients")
    p.add_argument("--timeout_s", type=float, default=120.0, help="per request; past it a request counts as a hang")
    p.add_argument("--context", type=int, default=128, help="the policy's --max_model_len")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--routes", default=None, help="comma-separated subset, e.g. /generate (default: every route)")
    p.add_argument("--json", default=None, help="write the figures here")
    args = p.parse_args()
    if not 1 <= args.requests <= 10000 or not 1 <= args.clients <= 1000:
        raise SystemExit("--requests must be in [1, 10000] and --clients in [1, 1000]")
    chosen = args.routes.split(",") if args.routes else list(ROUTES)
    if set(chosen) - set(ROUTES):
        raise SystemExit(f"--routes: unknown {sorted(set(chosen) - set(ROUTES))}; expected some of {list(ROUTES)}")

    import httpx

    from metastone.assets.qwen_tokenizer import build_qwen_tokenizer
    from metastone.assets.tiny import make_tiny_qwen2

    work = Path(tempfile.mkdtemp(prefix="metastone-fuzz-"))
    tokenizer = build_qwen_tokenizer("qwq")
    model = make_tiny_qwen2(work / "model", tokenizer, head_format="released", seed=1)
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]  # the ids the model reads (>= the tokenizer's)
    ids = tokenizer.encode(PROMPT + RESPONSE, add_special_tokens=False)
    plen = len(tokenizer.encode(PROMPT, add_special_tokens=False))
    common = ["--model_path", str(model), "--backend", args.backend, "--dtype", "float32"]
    eager = ["--enforce_eager"] if args.backend == "vllm" else []
    services = []
    try:
        services.append(ServiceProcess(["serve-score", *common, "--max_model_len", "2048"] if args.backend == "vllm"
                                       else ["serve-score", *common], work / "score.log", ready_timeout=600))
        services.append(ServiceProcess(["serve-policy", *common, "--max_model_len", str(args.context), *eager],
                                       work / "policy.log", ready_timeout=600))
        scorer, policy = services
        specs = {r: spec for r, spec in routes(str(model), ids, plen, vocab).items() if r in chosen}
        url_of = {"/score": scorer, "/score_ids": scorer, "/generate": policy, "/v1/completions": policy}
        baseline = {r: httpx.post(url_of[r].url + r, json=specs[r][0], timeout=300).json() for r in specs}

        def check_good(route, out):
            ref = baseline[route]
            if route == "/score":
                return abs(out["value"] - ref["value"]) < 1e-3 and out["score_positions"] == ref["score_positions"]
            if route == "/score_ids":
                return abs(out["results"][0]["value"] - ref["results"][0]["value"]) < 1e-3
            if route == "/generate":
                return len(out["results"]) == 2
            return len(out["choices"]) == 1

        report = {"backend": args.backend, "requests_per_route": args.requests, "clients": args.clients, "routes": []}
        for i, route in enumerate(specs):
            row = asyncio.run(fuzz_route(url_of[route].url, route, specs[route], vocab, args.requests, args.clients,
                                         args.timeout_s, check_good, url_of[route], args.seed + i))
            report["routes"].append(row)
            print(json.dumps(row), flush=True)
        if any(service.proc.poll() is not None for service in services):
            report["crashed"] = True
    finally:
        for service in services:
            service.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    bad = sum(r.get("5xx", 0) + r.get("hang", 0) + r.get("good_wrong", 0) for r in report["routes"])
    print(f"fuzz {args.backend}: {bad} 5xx/hang/wrong answers over {len(report['routes'])} routes; logs in {work}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
