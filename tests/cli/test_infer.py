"""``metastone infer`` makes its engines only when drafts are missing: rerun on a finished output file, it
starts no engine (an in-process vLLM engine costs ~30 s on 2 cores before it finds there is nothing to do)."""


def test_a_finished_run_starts_no_engine(tiny_model_dir, demo4, tmp_path, monkeypatch):
    import json

    import metastone.engines as engines_module
    from metastone.cli import build_parser
    from metastone.cli.infer import main

    made = []
    real = engines_module.make_engines

    def counting(cfg):
        made.append(cfg.backend)
        return real(cfg)

    monkeypatch.setattr(engines_module, "make_engines", counting)
    out = tmp_path / "drafts.jsonl"
    argv = ["infer", "--task", "demo", "--input_file", str(demo4), "--out", str(out), "--model", str(tiny_model_dir),
            "--backend", "hf", "--dtype", "float32", "--n_samples", "2", "--max_tokens", "4", "--no_progress"]
    assert main(build_parser().parse_args(argv)) == 0
    first = out.read_text()
    assert made == ["hf"] and len(first.splitlines()) == 8
    assert all(json.loads(line)["score"] is not None for line in first.splitlines())
    assert main(build_parser().parse_args(argv)) == 0  # finished: nothing to generate, no engine made
    assert made == ["hf"] and out.read_text() == first
    bad = ["infer", "--task", "demo", "--input_file", str(demo4), "--out", str(tmp_path / "bad.jsonl"), "--model",
           str(tiny_model_dir), "--score_while_generating", "--response_api_url", "http://127.0.0.1:1",
           "--score_api_url", "http://127.0.0.1:2", "--no_progress"]
    try:  # a flag error still comes before any work, engine or not
        main(build_parser().parse_args(bad))
    except ValueError as exc:
        assert "--score_while_generating needs --backend vllm or hf" in str(exc)
    else:
        raise AssertionError("conflicting flags were accepted")
    assert made == ["hf"]
