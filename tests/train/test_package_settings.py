"""Settings that need an optional package: picked by what is importable, or refused before any worker starts."""

from __future__ import annotations

import pytest

from tests.train.test_dry_run import data_files, dry_run  # noqa: F401 - fixture reused

pytestmark = pytest.mark.train

ATTN = "actor_rollout_ref.model.override_config.attn_implementation"


@pytest.fixture
def importable(monkeypatch):
    """Pretend exactly the given modules are importable (the real check asks importlib)."""
    from metastone.train import packages

    def set_modules(*present):
        monkeypatch.setattr(packages, "importable", lambda module: module in present)

    return set_modules


def composed(*overrides):
    from metastone.train.launch import compose_config
    from metastone.train.packages import resolve_package_settings

    cfg = compose_config(list(overrides))
    return cfg, resolve_package_settings(cfg)


def test_s1_preset_dry_run_on_this_machine_picks_what_is_importable(data_files, capsys):  # noqa: F811
    from metastone.train.packages import importable

    assert dry_run("preset=s1_1p5b", *data_files) == 0
    want = "flash_attention_2" if importable("flash_attn") else "sdpa"
    assert f"{ATTN}={want} chosen" in capsys.readouterr().out


@pytest.mark.parametrize("present, want", [((), "sdpa"), (("flash_attn",), "flash_attention_2")])
def test_default_attention_follows_flash_attn(present, want, importable, data_files):  # noqa: F811
    importable(*present)
    cfg, notes = composed("preset=s1_7b", *data_files)
    assert cfg.actor_rollout_ref.model.override_config.attn_implementation == want
    assert any(f"{ATTN}={want} chosen" in n for n in notes)


def test_explicit_flash_attention_without_flash_attn_is_refused_naming_the_fix(importable, data_files):  # noqa: F811
    importable()
    with pytest.raises(ValueError, match=rf"{ATTN}='flash_attention_2' needs the flash_attn package.*=sdpa"):
        dry_run("preset=s1_1p5b", f"+{ATTN}=flash_attention_2", *data_files)


def test_explicit_attention_is_kept(importable, data_files):  # noqa: F811
    importable("flash_attn")
    cfg, notes = composed("preset=s1_1p5b", f"+{ATTN}=eager", *data_files)
    assert cfg.actor_rollout_ref.model.override_config.attn_implementation == "eager" and notes == []


def test_liger_without_liger_kernel_is_refused(importable, tiny_model_dir, data_files):  # noqa: F811
    importable()
    with pytest.raises(ValueError, match=r"actor_rollout_ref\.model\.use_liger=true .*liger_kernel.*use_liger=false"):
        dry_run("preset=tiny", f"actor_rollout_ref.model.path={tiny_model_dir}", "actor_rollout_ref.model.use_liger=true",
                *data_files)
    importable("liger_kernel")
    assert dry_run("preset=tiny", f"actor_rollout_ref.model.path={tiny_model_dir}",
                   "actor_rollout_ref.model.use_liger=true", *data_files) == 0


def test_fused_kernels_without_triton_are_refused_for_plain_grpo(importable, data_files):  # noqa: F811
    importable()
    with pytest.raises(ValueError, match=r"use_fused_kernels=true .*triton"):
        composed("preset=s1_1p5b", "actor_rollout_ref.sprm.enable=false",
                 "actor_rollout_ref.model.use_fused_kernels=true", *data_files)
