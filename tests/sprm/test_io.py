import json

import pytest
import torch

from metastone.sprm import SPRMConfig, SPRMHead, load_head, save_head


def _head(d=8, seed=0):
    torch.manual_seed(seed)
    return SPRMHead(d)


def test_roundtrip_both_formats(tmp_path):
    head = _head()
    cfg = SPRMConfig(hidden_size=8, separators=("\n", "。"), aggregation="min")
    save_head(head, tmp_path, cfg)
    assert {p.name for p in tmp_path.iterdir()} == {"sprm_head.safetensors", "sprm_config.json", "score_module.pt"}
    loaded, loaded_cfg = load_head(tmp_path, hidden_size=8)
    assert loaded_cfg == cfg and not loaded.training
    for k, v in head.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    released, released_cfg = load_head(tmp_path / "score_module.pt")
    assert released_cfg == SPRMConfig(hidden_size=8)  # no config in the released format: paper defaults
    for k, v in head.state_dict().items():
        assert torch.equal(released.state_dict()[k], v)


def test_released_state_dict_as_written_by_torch(tmp_path):
    head = _head(d=16).to(torch.bfloat16)
    torch.save(head.state_dict(), tmp_path / "score_module.pt")
    loaded, cfg = load_head(tmp_path)
    assert cfg.hidden_size == 16 and cfg.feature_layer == -2 and cfg.separators == (".\n\n",)
    assert cfg.aggregation == "geomean"
    assert torch.equal(loaded[0].weight, head[0].weight)


def test_wrapper_prefixes_are_stripped(tmp_path):
    head = _head()
    torch.save({f"module.{k}": v for k, v in head.state_dict().items()}, tmp_path / "score_module.pt")
    loaded, _ = load_head(tmp_path)
    assert torch.equal(loaded[3].bias, head[3].bias)


def test_size_mismatch_names_both_sizes(tmp_path):
    save_head(_head(d=8), tmp_path, SPRMConfig(hidden_size=8))
    with pytest.raises(ValueError, match=r"hidden size 8.*hidden_size is 12"):
        load_head(tmp_path, hidden_size=12)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no SPRM head"):
        load_head(tmp_path)
    torch.save({"weight": torch.zeros(2)}, tmp_path / "score_module.pt")
    with pytest.raises(ValueError, match=r"score_module.pt.*missing keys"):
        load_head(tmp_path)
    (tmp_path / "score_module.pt").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="cannot be read"):
        load_head(tmp_path)
    bad = {"0.weight": torch.zeros(16, 8), "0.bias": torch.zeros(16), "3.weight": torch.zeros(1, 15), "3.bias": torch.zeros(1)}
    torch.save(bad, tmp_path / "score_module.pt")
    with pytest.raises(ValueError, match="3.weight has shape"):
        load_head(tmp_path)


def test_config_validation_and_unknown_fields(tmp_path):
    with pytest.raises(ValueError, match="feature_layer"):
        SPRMConfig(hidden_size=8, feature_layer=-1)
    with pytest.raises(ValueError, match="aggregation"):
        SPRMConfig(hidden_size=8, aggregation="median")
    with pytest.raises(ValueError, match="think_tokens"):
        SPRMConfig(hidden_size=8, think_tokens=("<think>",))
    (tmp_path / "sprm_config.json").write_text(json.dumps({"hidden_size": 8, "sepparators": ["x"]}))
    with pytest.raises(ValueError, match=r"sprm_config.json: unknown field\(s\) \['sepparators'\]"):
        SPRMConfig.load(tmp_path / "sprm_config.json")
    (tmp_path / "sprm_config.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        SPRMConfig.load(tmp_path / "sprm_config.json")


def test_lang_modes():
    assert SPRMConfig.for_lang(8, "zh").separators == ("@zh",)
    assert SPRMConfig.for_lang(8).separators == (".\n\n",)
    with pytest.raises(ValueError, match="lang"):
        SPRMConfig.for_lang(8, "fr")


def test_head_beside_single_file_weights_gets_an_index(tmp_path, qwq_tokenizer):
    """Loaders that read every *.safetensors (vLLM) must see the model file only; HF still loads the folder."""
    import json

    from transformers import AutoModelForCausalLM

    from metastone.assets.tiny import make_tiny_qwen2
    from metastone.sprm.io import MODEL_WEIGHTS_INDEX, ensure_weights_index

    folder = make_tiny_qwen2(tmp_path / "m", qwq_tokenizer, head_format="ours", seed=0)
    index = json.loads((folder / MODEL_WEIGHTS_INDEX).read_text())
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        assert set(index["weight_map"]) == set(f.keys())
    AutoModelForCausalLM.from_pretrained(folder)  # HF still takes the single file
    assert set(index["weight_map"].values()) == {"model.safetensors"}
    assert not any(k.startswith(("0.", "3.")) for k in index["weight_map"])
    assert ensure_weights_index(folder) is None  # an existing index is left alone


def test_locate_head_one_rule_for_which_head_and_its_size(tmp_path):
    """``locate_head``: the head in --head when given, else the model folder's (ours preferred over the released
    file), checked against the backbone's hidden size read from config.json (top level or text_config)."""
    from metastone.sprm import backbone_hidden_size, locate_head, locate_head_config

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"text_config": {"hidden_size": 8}}))
    assert backbone_hidden_size(model) == 8
    torch.manual_seed(0)
    save_head(SPRMHead(8), model, SPRMConfig(hidden_size=8, aggregation="min"))
    head, cfg = locate_head(model)
    assert (head.hidden_size, cfg.aggregation) == (8, "min")
    assert locate_head_config(model).aggregation == "min"
    other = tmp_path / "other"
    torch.save(SPRMHead(8).state_dict(), tmp_path / "score_module.pt")
    save_head(SPRMHead(8), other, SPRMConfig(hidden_size=8, aggregation="last"))
    assert locate_head(model, other)[1].aggregation == "last"
    released_head, released_cfg = locate_head(model, tmp_path / "score_module.pt")
    assert released_cfg == SPRMConfig(hidden_size=8)  # the paper's defaults
    assert locate_head_config(model, tmp_path / "score_module.pt").separators == SPRMConfig(hidden_size=1).separators
    (model / "config.json").write_text(json.dumps({"hidden_size": 16}))
    with pytest.raises(ValueError, match="hidden size 8, but the model's hidden_size is 16"):
        locate_head(model)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        backbone_hidden_size(tmp_path / "nowhere")
