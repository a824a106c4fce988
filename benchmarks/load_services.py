"""Load on the HTTP services: many concurrent clients against each route, beside one sequential client.

    python benchmarks/load_services.py --backend hf                      # 64 clients, 10,000 requests per service
    python benchmarks/load_services.py --backend vllm --json load.json
    python benchmarks/load_services.py --backend hf --requests 2000 --routes /score_ids

Starts ``serve-score`` and ``serve-policy`` as the README does (``--model_path M --backend B``) on a tiny
random Qwen2 with the real Qwen tokenizer, built in a temp dir. For each route (``/score``,
``/score_ids``, ``/generate``, ``/v1/completions``; ``--requests`` per service, split evenly over its
routes) it first sends ``--sequential`` requests from one client, one at a time, then the route's share
from ``--clients`` concurrent clients (each sends its next request when the last is answered), with
mixed lengths: traces of 24 to ~1,000 tokens, drafts of 4 to 32 tokens, 1 or 2 drafts per ``/generate``.
A 503 with ``Retry-After`` (the services' back-pressure) is waited out and sent again, as the
project's clients do; it is counted. Reported per route: requests answered 200, 4xx, 5xx, client
timeouts (``--timeout_s``), connection errors, lost (never answered 200), throughput and p50/p99
latency for both the concurrent and the sequential client and their ratio; per service, the RSS of its
process tree every second (``rss_mb_series``) and its change over the second half of the requests.
``--rounds R`` sends each route's share R times (fresh bodies) and reports the RSS change of every
round: caches that fill up (vLLM's KV blocks are first touched as its prefix cache hands them out,
up to ``--kv_cache_gib``) grow less each round and stop; a leak grows by the same amount every round.
Exit status 1 if any request got a 5xx, timed out, or was lost. Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metastone.serve.http.process import ServiceProcess  # noqa: E402

QUESTION = "Tom has 3 apples and buys {n} more. How many apples does he have?"
STEPS = "First, count the apples he has.\n\nThen add the {n} he buys.\n\n"
ROUTES = {"score": ("/score", "/score_ids"), "policy": ("/generate", "/v1/completions")}


def bodies(route: str, n: int, tokenizer, model: str, rng: random.Random) -> list[dict]:
    """``n`` request bodies of mixed lengths for ``route``."""
    out = []
    for i in range(n):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION.format(n=i % 97)}], tokenize=False,
                                               add_generation_prompt=True)
        trace = prompt + "<think>\n" + STEPS.format(n=i % 97) * rng.choice([1, 2, 4, 8, 16, 32]) + "</think>\nThe answer."
        if route == "/score":
            out.append({"text": trace, "return_all_scores": rng.random() < 0.5})
        elif route == "/score_ids":
            ids = tokenizer.encode(trace, add_special_tokens=False)
            out.append({"sequences": [ids], "prompt_lens": [len(tokenizer.encode(prompt, add_special_tokens=False))]})
        elif route == "/generate":
            out.append({"prefix_prompt": prompt, "max_tokens": rng.randint(4, 32), "response_num": rng.choice([1, 2]),
                        "temperature": 0.7, "seed": i, "stop": []})
        else:
            out.append({"model": model, "prompt": tokenizer.encode(prompt, add_special_tokens=False),
                        "max_tokens": rng.randint(4, 32), "temperature": 0.7, "seed": i, "return_token_ids": True})
    return out


class RssSampler:
    """The service's RSS every ``period_s`` in a thread, with the number of requests answered at that time."""

    def __init__(self, service: ServiceProcess, period_s: float = 1.0):
        self.service, self.period_s, self.samples, self.answered = service, period_s, [], 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set():
            self.samples.append((round(time.monotonic() - t0, 1), self.answered, round(self.service.rss_mb(), 1)))
            self._stop.wait(self.period_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((self.samples[-1][0] + self.period_s, self.answered, round(self.service.rss_mb(), 1)))

    def second_half_change_mb(self, total: int) -> float:
        """RSS at the end minus RSS when half of ``total`` requests had been answered."""
        half = next((rss for _, done, rss in self.samples if done >= total / 2), self.samples[-1][2])
        return round(self.samples[-1][2] - half, 1)


async def drive(url: str, route: str, plan: list[dict], clients: int, timeout_s: float, sampler: RssSampler | None) -> dict:
    """Send every body in ``plan`` from ``clients`` concurrent clients; the route's figures."""
    import httpx

    counts, latencies, examples = Counter(), [], {}
    queue = list(reversed(plan))

    async def one_client() -> None:
        # one connection per client, as separate client processes would have (a shared pool of 64 costs more
        # client CPU per request than the services themselves on a small machine)
        async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=httpx.Limits(max_connections=1)) as client:
            while queue:
                body = json.dumps(queue.pop()).encode()
                t0 = time.monotonic()
                while True:
                    try:
                        resp = await client.post(route, content=body, headers={"content-type": "application/json"})
                    except httpx.TimeoutException:
                        counts["timeout"] += 1
                        break
                    except httpx.HTTPError as exc:
                        counts["connection_error"] += 1
                        examples.setdefault("connection_error", repr(exc)[:300])
                        break
                    if resp.status_code == 503 and "retry-after" in resp.headers:
                        counts["busy_503_retried"] += 1
                        await asyncio.sleep(float(resp.headers["retry-after"]))
                        continue
                    if resp.status_code == 200:
                        counts["ok"] += 1
                        latencies.append(time.monotonic() - t0)
                        if sampler is not None:
                            sampler.answered += 1
                    else:
                        counts[f"{resp.status_code // 100}xx"] += 1
                        examples.setdefault(str(resp.status_code), resp.text[:300])
                    break

    t0 = time.monotonic()
    await asyncio.gather(*(one_client() for _ in range(min(clients, len(plan)))))
    wall = time.monotonic() - t0
    latencies.sort()

    def pct(q: float) -> float | None:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 1) if latencies else None

    return {"requests": len(plan), "ok": counts["ok"], "4xx": counts["4xx"], "5xx": counts["5xx"],
            "timeouts": counts["timeout"], "connection_errors": counts["connection_error"],
            "lost": len(plan) - counts["ok"], "busy_503_retried": counts["busy_503_retried"], "seconds": round(wall, 2),
            "throughput_rps": round(counts["ok"] / wall, 2) if wall else None, "p50_ms": pct(0.5), "p99_ms": pct(0.99),
            "mean_ms": round(statistics.fmean(latencies) * 1000, 1) if latencies else None, "examples": examples}


def merge(runs: list[dict]) -> dict:
    """One route's figures over several rounds: counts summed, throughput over the summed time, latency
    percentiles the worst round's (the per-round figures are kept under ``rounds``)."""
    if len(runs) == 1:
        return runs[0]
    out = {k: sum(r[k] for r in runs) for k in ("requests", "ok", "4xx", "5xx", "timeouts", "connection_errors", "lost",
                                               "busy_503_retried")}
    seconds = sum(r["seconds"] for r in runs)
    out.update(seconds=round(seconds, 2), throughput_rps=round(out["ok"] / seconds, 2) if seconds else None,
               p50_ms=max(r["p50_ms"] or 0 for r in runs), p99_ms=max(r["p99_ms"] or 0 for r in runs),
               examples={k: v for r in runs for k, v in r["examples"].items()},
               rounds=[{k: v for k, v in r.items() if k != "examples"} for r in runs])
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=["hf", "vllm"], default="hf")
    p.add_argument("--clients", type=int, default=64, help="concurrent clients")
    p.add_argument("--requests", type=int, default=10000, help="per service, split evenly over its routes")
    p.add_argument("--sequential", type=int, default=200, help="requests per route from one sequential client")
    p.add_argument("--rounds", type=int, default=1, help="send each route's share this many times (RSS per round)")
    p.add_argument("--timeout_s", type=float, default=120.0, help="per request; past it a request counts as a timeout")
    p.add_argument("--routes", default=None, help="comma-separated subset, e.g. /score_ids (default: all four)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the report here")
    args = p.parse_args()
    if (not 1 <= args.clients <= 1000 or not 1 <= args.requests <= 100000 or not 1 <= args.sequential <= 10000
            or not 1 <= args.rounds <= 100):
        raise SystemExit("--clients must be in [1, 1000], --requests in [1, 100000], --sequential in [1, 10000], "
                         "--rounds in [1, 100]")
    every = [r for routes in ROUTES.values() for r in routes]
    chosen = args.routes.split(",") if args.routes else every
    if set(chosen) - set(every):
        raise SystemExit(f"--routes: unknown {sorted(set(chosen) - set(every))}; expected some of {every}")

    from metastone.assets.qwen_tokenizer import build_qwen_tokenizer
    from metastone.assets.tiny import make_tiny_qwen2

    work = Path(tempfile.mkdtemp(prefix="metastone-load-"))
    tokenizer = build_qwen_tokenizer("qwq")
    model = make_tiny_qwen2(work / "model", tokenizer, head_format="released", seed=1)
    rng = random.Random(args.seed)
    report = {"backend": args.backend, "clients": args.clients, "requests_per_service": args.requests,
              "sequential_per_route": args.sequential, "services": {}, "routes": []}
    common = ["--model_path", str(model), "--backend", args.backend]
    extra = {"score": [], "policy": ["--enforce_eager"] if args.backend == "vllm" else []}
    bad = 0
    for name, routes in ROUTES.items():
        routes = [r for r in routes if r in chosen]
        if not routes:
            continue
        service = ServiceProcess([f"serve-{name}", *common, *extra[name]], work / f"{name}.log", ready_timeout=600)
        try:
            share = args.requests // len(routes)
            sampler = RssSampler(service)
            round_rss = []
            for route in routes:
                seq = asyncio.run(drive(service.url, route, bodies(route, args.sequential, tokenizer, str(model), rng), 1,
                                        args.timeout_s, None))
                runs = []
                for _ in range(args.rounds):
                    before = service.rss_mb()
                    runs.append(asyncio.run(drive(service.url, route, bodies(route, share, tokenizer, str(model), rng),
                                                  args.clients, args.timeout_s, sampler)))
                    round_rss.append({"route": route, "rss_mb_before": round(before, 1),
                                      "rss_mb_after": round(service.rss_mb(), 1)})
                conc = merge(runs)
                row = {"service": name, "route": route, "concurrent": conc, "sequential": seq,
                       "throughput_ratio": round(conc["throughput_rps"] / seq["throughput_rps"], 2)
                       if conc["throughput_rps"] and seq["throughput_rps"] else None}
                report["routes"].append(row)
                bad += conc["5xx"] + conc["timeouts"] + conc["lost"] + seq["5xx"] + seq["timeouts"] + seq["lost"]
                print(json.dumps({k: v for k, v in row.items()}), flush=True)
            sampler.stop()
            import httpx

            health = httpx.get(service.url + "/health", timeout=10).json()
            report["services"][name] = {"rss_mb_series": sampler.samples, "rss_mb_first": sampler.samples[0][2],
                                        "rss_mb_last": sampler.samples[-1][2],
                                        "rss_change_second_half_mb": sampler.second_half_change_mb(
                                            share * len(routes) * args.rounds),
                                        "rss_mb_per_round": round_rss,
                                        "health": health, "crashed": service.proc.poll() is not None}
            print(json.dumps({k: v for k, v in report["services"][name].items() if k != "rss_mb_series"}), flush=True)
        finally:
            service.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    for row in report["routes"]:
        c, s = row["concurrent"], row["sequential"]
        print(f"{row['route']:16s} {args.clients} clients: {c['ok']}/{c['requests']} ok, 5xx {c['5xx']}, timeouts "
              f"{c['timeouts']}, lost {c['lost']}, {c['throughput_rps']} req/s (p50 {c['p50_ms']} ms, p99 {c['p99_ms']} ms) | "
              f"1 client: {s['throughput_rps']} req/s (p50 {s['p50_ms']} ms) | x{row['throughput_ratio']}")
    for name, svc in report["services"].items():
        per_round = ", ".join(f"{r['route']} {r['rss_mb_after'] - r['rss_mb_before']:+.1f}" for r in svc["rss_mb_per_round"])
        print(f"{name} service RSS {svc['rss_mb_first']} -> {svc['rss_mb_last']} MB, second half "
              f"{svc['rss_change_second_half_mb']:+} MB; per round (MB): {per_round}")
    print(f"load {args.backend}: {bad} 5xx/timeouts/lost; logs in {work}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
