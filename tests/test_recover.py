"""Weight-diff recovery (trainers/recover.py) on tiny local LLaMA fixtures laid out like the AlpacaFarm diffs."""

import json
import os
import stat

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from trainers import recover as rc

VOCAB, HIDDEN = 64, 16
TOKENIZER_FILES = {"tokenizer_config.json": '{"pad_token": "[PAD]"}', "special_tokens_map.json": '{"pad_token": "[PAD]"}',
                   "added_tokens.json": '{"[PAD]": 64}'}


def tiny_config(vocab: int) -> LlamaConfig:
    return LlamaConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=32, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                       tie_word_embeddings=False)


def mean_resized(state: dict) -> dict:
    """Written independently of the module: upstream's pad-token resize of embed_tokens and lm_head."""
    out = dict(state)
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        out[key] = torch.cat([state[key], state[key].mean(dim=0, keepdim=True)])
    return out


def write_bin_shards(state: dict, directory, n_shards: int) -> None:
    """The upstream diff layout: pytorch_model-0000i-of-0000n.bin plus pytorch_model.bin.index.json."""
    keys = list(state)
    weight_map = {}
    for i in range(n_shards):
        name = f"pytorch_model-{i + 1:05d}-of-{n_shards:05d}.bin"
        part = {k: state[k].clone() for k in keys[i::n_shards]}
        torch.save(part, directory / name)
        weight_map.update(dict.fromkeys(part, name))
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """raw_dir (vocab 64, save_pretrained) and the tuned state (raw + [PAD] row, then perturbed)."""
    torch.manual_seed(0)
    raw_dir = tmp_path_factory.mktemp("llama-raw")
    raw_model = LlamaForCausalLM(tiny_config(VOCAB))
    raw_model.save_pretrained(raw_dir)
    raw = {k: v.detach().clone() for k, v in raw_model.state_dict().items()}
    resized = mean_resized(raw)
    tuned = {k: v + 0.01 * torch.randn_like(v) for k, v in resized.items()}
    return {"raw_dir": raw_dir, "raw": raw, "resized": resized, "tuned": tuned}


def causal_diff_dir(models, path):
    """Causal-LM diff saved with save_pretrained (vocab 65), plus tokenizer files."""
    diff = {k: models["tuned"][k] - models["resized"][k] for k in models["tuned"]}
    model = LlamaForCausalLM(tiny_config(VOCAB + 1))
    model.load_state_dict(diff)
    model.save_pretrained(path)
    for name, text in TOKENIZER_FILES.items():
        (path / name).write_text(text)
    return path


def reward_diff(models, with_lm_head=True):
    diff = {f"backbone_model.{k}": models["tuned"][k] - models["resized"][k] for k in models["tuned"]
            if with_lm_head or k != "lm_head.weight"}
    diff["reward_head.weight"] = torch.randn(1, HIDDEN)
    diff["reward_head.bias"] = torch.tensor([0.25])
    return diff


def reward_diff_dir(models, path, with_lm_head=True):
    path.mkdir()
    diff = reward_diff(models, with_lm_head)
    write_bin_shards(diff, path, 3)
    config = {"model_type": "reward_model", "architectures": ["RewardModel"], "backbone_model_name_or_path": "sft10k",
              "torch_dtype": "float32"}
    (path / "config.json").write_text(json.dumps(config))
    for name, text in TOKENIZER_FILES.items():
        (path / name).write_text(text)
    return path, diff


def test_resize_appends_mean_rows_to_embeddings_and_lm_head(models):
    out = rc.resize_embeddings_for_new_tokens(models["raw"], 2)
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        old = models["raw"][key]
        assert out[key].shape == (VOCAB + 2, HIDDEN)
        assert torch.equal(out[key][:VOCAB], old)
        assert torch.allclose(out[key][VOCAB:], old.mean(dim=0).expand(2, -1), atol=1e-7)
    assert out["model.norm.weight"] is models["raw"]["model.norm.weight"]
    assert rc.resize_embeddings_for_new_tokens(models["raw"], 0) == models["raw"]
    with pytest.raises(ValueError, match=r"num_new_tokens is -1; expected >= 0"):
        rc.resize_embeddings_for_new_tokens(models["raw"], -1)


def test_apply_weight_diff_adds_and_maps_keys():
    raw = {"a": torch.ones(2), "b": torch.full((3,), 2.0)}
    diff = {"backbone_model.a": torch.tensor([0.5, -1.0]), "reward_head.bias": torch.tensor([7.0])}
    out = rc.apply_weight_diff(raw, diff, key_map=rc.reward_model_key, passthrough=("reward_head.",))
    assert set(out) == set(diff)  # raw "b" has no diff: dropped
    assert torch.equal(out["backbone_model.a"], torch.tensor([1.5, 0.0]))
    assert torch.equal(out["reward_head.bias"], torch.tensor([7.0]))


def test_apply_weight_diff_errors_name_key_and_shapes():
    raw = {"a": torch.ones(2, 3)}
    with pytest.raises(ValueError, match=r"shape mismatch for 'a': diff has \(3, 3\), raw 'a' has \(2, 3\)"):
        rc.apply_weight_diff(raw, {"a": torch.ones(3, 3)})
    with pytest.raises(ValueError, match=r"diff tensor 'extra' has no counterpart in the raw weights"):
        rc.apply_weight_diff(raw, {"a": torch.ones(2, 3), "extra": torch.ones(1)})


def test_recover_causal_lm_matches_tuned_and_loads(models, tmp_path):
    diff_dir = causal_diff_dir(models, tmp_path / "sft-wdiff")
    out = rc.recover(models["raw_dir"], diff_dir, tmp_path / "sft")
    assert out == tmp_path / "sft"
    state = load_file(str(out / "model.safetensors"))
    assert set(state) == set(models["tuned"])
    for key, tensor in models["tuned"].items():
        assert torch.allclose(state[key], tensor, atol=1e-6), key
    for name, text in TOKENIZER_FILES.items():
        assert (out / name).read_text() == text
    assert json.loads((out / "config.json").read_text())["vocab_size"] == VOCAB + 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folder left
    mask = os.umask(0o022)
    os.umask(mask)
    if not mask & stat.S_IRGRP:  # the group may read what the umask lets it read
        assert out.stat().st_mode & stat.S_IRGRP and out.stat().st_mode & stat.S_IXGRP

    loaded = LlamaForCausalLM.from_pretrained(out)
    for key, tensor in loaded.state_dict().items():
        assert torch.allclose(tensor, models["tuned"][key], atol=1e-6), key
    logits = loaded(torch.tensor([[1, 2, VOCAB]])).logits
    assert logits.shape == (1, 3, VOCAB + 1)


def test_recover_reward_model_from_sharded_bins(models, tmp_path):
    diff_dir, diff = reward_diff_dir(models, tmp_path / "rm-wdiff")
    out = rc.recover(models["raw_dir"], diff_dir, tmp_path / "rm")  # kind detected from config.json
    state = load_file(str(out / "model.safetensors"))
    assert set(state) == set(diff)
    for key, tensor in models["tuned"].items():
        assert torch.allclose(state[f"backbone_model.{key}"], tensor, atol=1e-6), key
    assert torch.equal(state["reward_head.weight"], diff["reward_head.weight"])
    assert torch.equal(state["reward_head.bias"], torch.tensor([0.25]))
    assert json.loads((out / "config.json").read_text())["model_type"] == "reward_model"


def test_reward_model_without_backbone_lm_head(models, tmp_path):
    diff_dir, diff = reward_diff_dir(models, tmp_path / "rm-wdiff", with_lm_head=False)
    out = rc.recover(models["raw_dir"], diff_dir, tmp_path / "rm", kind="reward_model")
    state = load_file(str(out / "model.safetensors"))
    assert "backbone_model.lm_head.weight" not in state and set(state) == set(diff)


def test_detect_kind():
    assert rc.detect_kind({"model_type": "llama"}, ["model.norm.weight"]) == "causal_lm"
    assert rc.detect_kind({"architectures": ["RewardModel"]}, []) == "reward_model"
    assert rc.detect_kind({}, ["backbone_model.model.norm.weight", "reward_head.bias"]) == "reward_model"


def test_integrity_sum_passes_and_fails(models, tmp_path):
    diff_dir = causal_diff_dir(models, tmp_path / "wdiff")
    true_sum = rc.weights_sum(models["tuned"])
    rc.recover(models["raw_dir"], diff_dir, tmp_path / "ok", expected_sum=true_sum)
    with pytest.raises(ValueError, match=rf"sum to {true_sum:.6f}, expected {true_sum + 1:.6f}"):
        rc.recover(models["raw_dir"], diff_dir, tmp_path / "bad", expected_sum=true_sum + 1)
    assert not (tmp_path / "bad").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok", "wdiff"]  # temp folder cleaned up


def test_model_sum_txt_in_diff_dir_is_checked(models, tmp_path):
    diff_dir = causal_diff_dir(models, tmp_path / "wdiff")
    (diff_dir / "model_sum.txt").write_text("12345.678\n")
    with pytest.raises(ValueError, match=r"integrity check failed.*expected 12345\.678000"):
        rc.recover(models["raw_dir"], diff_dir, tmp_path / "out")
    (diff_dir / "model_sum.txt").write_text(f"{rc.weights_sum(models['tuned'])}\n")
    rc.recover(models["raw_dir"], diff_dir, tmp_path / "out")


def test_rotary_buffers_missing_from_raw_are_rebuilt(models, tmp_path):
    diff_dir = causal_diff_dir(models, tmp_path / "wdiff")
    state = load_file(str(diff_dir / "model.safetensors"))
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.zeros(4)  # old transformers: tuned - raw == 0
    (diff_dir / "model.safetensors").unlink()
    write_bin_shards(state, diff_dir, 1)
    out = rc.recover(models["raw_dir"], diff_dir, tmp_path / "out")
    head_dim = HIDDEN // 2
    expected = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    got = load_file(str(out / "model.safetensors"))["model.layers.0.self_attn.rotary_emb.inv_freq"]
    assert torch.allclose(got, expected)
    LlamaForCausalLM.from_pretrained(out)  # the old buffer name does not break loading


def test_bf16_output_and_sharded_save(models, tmp_path):
    diff_dir = causal_diff_dir(models, tmp_path / "wdiff")
    out = rc.recover(models["raw_dir"], diff_dir, tmp_path / "out", dtype=torch.bfloat16)
    config = json.loads((out / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    state = load_file(str(out / "model.safetensors"))
    assert all(t.dtype == torch.bfloat16 for t in state.values())

    shard_dir = tmp_path / "sharded"
    shard_dir.mkdir()
    rc.save_state_dict(models["tuned"], shard_dir, max_shard_bytes=4096)
    assert len(list(shard_dir.glob("model-*-of-*.safetensors"))) > 1
    reloaded = rc.load_state_dict(shard_dir)
    assert all(torch.equal(reloaded[k], v) for k, v in models["tuned"].items())


def test_bad_inputs_raise_clear_errors(models, tmp_path):
    diff_dir = causal_diff_dir(models, tmp_path / "wdiff")
    with pytest.raises(ValueError, match=r"raw_dir .*nowhere does not exist"):
        rc.recover(tmp_path / "nowhere", diff_dir, tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"no weight files in .*empty; expected model.safetensors"):
        rc.recover(models["raw_dir"], empty, tmp_path / "out")
    with pytest.raises(ValueError, match=r"kind is 'policy'; expected"):
        rc.recover(models["raw_dir"], diff_dir, tmp_path / "out", kind="policy")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match=r"out_dir .*taken exists and is not empty"):
        rc.recover(models["raw_dir"], diff_dir, taken)
    assert (taken / "keep.txt").exists()


def test_diff_keys_without_raw_counterpart_and_shape_mismatch(models, tmp_path):
    (tmp_path / "extra").mkdir()
    extra = {k: models["tuned"][k] - models["resized"][k] for k in models["tuned"]}
    extra["model.layers.9.mlp.up_proj.weight"] = torch.zeros(32, HIDDEN)
    write_bin_shards(extra, tmp_path / "extra", 2)
    (tmp_path / "extra" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match=r"diff tensor 'model.layers.9.mlp.up_proj.weight' has no counterpart"):
        rc.recover(models["raw_dir"], tmp_path / "extra", tmp_path / "out")

    (tmp_path / "shape").mkdir()
    bad = {k: models["tuned"][k] - models["resized"][k] for k in models["tuned"]}
    bad["model.norm.weight"] = torch.zeros(HIDDEN + 1)
    write_bin_shards(bad, tmp_path / "shape", 1)
    (tmp_path / "shape" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match=r"shape mismatch for 'model.norm.weight': diff has \(17,\), raw 'model.norm.weight' has \(16,\)"):
        rc.recover(models["raw_dir"], tmp_path / "shape", tmp_path / "out")

    (tmp_path / "small").mkdir()
    small = {k: v[:VOCAB - 1] if "embed" in k or "lm_head" in k else v for k, v in models["raw"].items()}
    write_bin_shards(small, tmp_path / "small", 1)
    (tmp_path / "small" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match=r"num_new_tokens is -1"):
        rc.recover(models["raw_dir"], tmp_path / "small", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_recovers_a_reward_model_into_the_harness_layout(models, tmp_path):
    """`harness models recover` on a reward diff gives a directory our reward loader scores with."""
    from harness.cli import main
    from trainers import heads

    diff_dir, diff = reward_diff_dir(models, tmp_path / "rm-wdiff")
    out = tmp_path / "reward-model-human"
    assert main(["models", "recover", "--raw", str(models["raw_dir"]), "--diff", str(diff_dir), "--out", str(out)]) == 0
    rm = heads.load_reward_model(str(out), torch.float32, seed=0)
    # the score is reward_head(last hidden state of the tuned backbone) at the last token
    tuned = LlamaForCausalLM(tiny_config(VOCAB + 1))
    tuned.load_state_dict(models["tuned"])
    ids = torch.tensor([[3, 17, 5, 64]])
    mask = torch.ones_like(ids)
    pos = torch.arange(4)[None]
    with torch.no_grad():
        hidden = tuned.model(input_ids=ids, attention_mask=mask).last_hidden_state[0, -1]
        expected = hidden @ diff["reward_head.weight"][0] + 0.25
        got = rm.score_at(ids, mask, pos, torch.tensor([3]))
    assert got.item() == pytest.approx(expected.item(), abs=1e-5)
    assert json.loads((out / "scalar_head.json").read_text())["reward_config"]["model_type"] == "reward_model"
    assert main(["models", "recover", "--raw", str(models["raw_dir"]), "--diff", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "x")]) == 2
