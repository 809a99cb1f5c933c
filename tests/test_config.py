"""Configuration: validation on construction, presets, overrides, files, and preflight before any weights load."""

import json
import subprocess
import sys

import pytest

from harness import presets
from trainers import identity, models
from trainers.config import TrainConfig
from trainers.execution import ExecutionConfig
from trainers.run_config import RunConfig, field_names
from trainers.trainer import PPOTrainer


def test_defaults_are_the_papers_lora_and_ppo_settings():
    cfg = presets.resolve("paper").train
    assert (cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout) == (8, 64.0, 0.1)
    assert cfg.lora_target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")
    # the authors' command: 256 rollouts, one optimiser step per 16 of them, 2 epochs
    assert (cfg.rollout_batch_size, cfg.step_batch_size, cfg.noptepochs) == (256, 16, 2)
    assert (cfg.lr, cfg.cliprange, cfg.vf_coef, cfg.gamma, cfg.lam) == (1e-5, 0.2, 0.1, 1.0, 0.95)
    assert (cfg.query_len, cfg.response_len, cfg.temperature, cfg.checkpoint_every) == (192, 300, 1.0, 20)
    assert cfg.num_minibatches == 16 and cfg.grad_accum_steps == 4


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"regularizer": "kl_div"}, "regularizer='kl_div' is not known; valid: kl, clamped_kl"),
        ({"rollout_batch_size": 10, "step_batch_size": 4}, "rollout_batch_size=10 must be a multiple of step_batch_size=4"),
        ({"step_batch_size": 4, "micro_batch_size": 3}, "step_batch_size=4 must be a multiple of micro_batch_size=3"),
        ({"lora": False, "reference": "shared"}, "reference='shared' needs lora=true"),
        ({"reward": "rule:count:a", "value_init": "reward"}, "value_init='reward' needs a reward model"),
        ({"temperature": 0.0}, "temperature=0.0 must be > 0"),
        ({"lora_dropout": 1.5}, "lora_dropout=1.5 must be in [0, 1)"),
        ({"reference": "twin"}, "reference='twin' is invalid: expected one of 'shared', 'copy'"),
        ({"steps": "3"}, "steps='3' is invalid: expected int"),
        ({"kl_coef": float("nan")}, "kl_coef=nan must be a finite number"),
        ({"temperature": float("inf")}, "temperature=inf must be a finite number"),
        ({"penalty_reward": float("-inf")}, "penalty_reward=-inf must be a finite number"),
        ({"adam_eps": 0.0}, "adam_eps=0.0 must be > 0"),
        ({"lr_schedule": "cosine"}, "lr_schedule='cosine' is invalid: expected one of 'constant', 'linear'"),
    ],
)
def test_invalid_configurations_name_field_value_and_allowed(overrides, expected):
    values = presets.preset("smoke")
    values.update(overrides)
    with pytest.raises(ValueError) as err:
        TrainConfig(**values)
    assert expected in str(err.value)


def test_config_is_frozen_and_its_run_id_is_stable():
    a, b = presets.resolve("smoke").train, presets.resolve("smoke").train
    with pytest.raises(AttributeError):
        a.steps = 5
    assert identity.run_id(a) == identity.run_id(b)
    assert identity.run_id(presets.resolve("smoke", overrides=["seed=1"]).train) != identity.run_id(a)
    assert TrainConfig.from_dict(json.loads(json.dumps(a.to_dict()))) == a
    run = presets.resolve("smoke", overrides=["threads=3", "lean_decode_step=false"])
    with pytest.raises(AttributeError):
        run.execution.threads = 5
    assert RunConfig.from_dict(json.loads(json.dumps(run.to_dict()))) == run


def test_none_regularizer_forces_dropout_zero():
    assert presets.resolve("smoke", overrides=["regularizer=none"]).train.effective_lora_dropout == 0.0
    assert presets.resolve("smoke", overrides=["regularizer=dropout_only"]).train.effective_lora_dropout == 0.1


def test_overrides_are_typed_and_unknown_names_get_suggestions():
    cfg = presets.resolve("smoke", overrides=["steps=3", "lr=5e-4", "lora=false", "reference=copy",
                                              "penalty_reward=none", "lora_target_modules=q_proj,v_proj"]).train
    assert (cfg.steps, cfg.lr, cfg.lora, cfg.penalty_reward) == (3, 5e-4, False, None)
    assert cfg.lora_target_modules == ("q_proj", "v_proj")
    with pytest.raises(ValueError, match="did you mean regularizer"):
        presets.resolve("smoke", overrides=["regulariser=kl"])
    with pytest.raises(ValueError, match="lora='maybe' is invalid: expected true or false"):
        presets.resolve("smoke", overrides=["lora=maybe"])
    with pytest.raises(ValueError, match="preset='huge' is not known; valid presets: smoke, tiny, miniature, paper"):
        presets.resolve("huge")


def test_yaml_config_file_with_preset_and_override_order(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("preset: smoke\nlr: 1e-5\nsteps: 7\nregularizer: bregman\n")
    cfg = presets.resolve(None, str(path), ["steps=2"]).train
    assert (cfg.lr, cfg.steps, cfg.regularizer, cfg.policy) == (1e-5, 2, "bregman", "tiny-random-llama")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"stpes": 3}))
    with pytest.raises(ValueError, match="unknown setting 'stpes'"):
        presets.resolve(None, str(bad))


def _refuse_weights(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("weights were loaded before the configuration was checked")
    monkeypatch.setattr(models, "load_causal_lm", boom)
    monkeypatch.setattr(models, "tiny_random_llama", boom)


def test_preflight_fails_before_loading_weights(smoke, monkeypatch, tmp_path):
    _refuse_weights(monkeypatch)
    cases = [
        (smoke(policy="./missing/sft10k"), "policy='./missing/sft10k': no such model directory"),
        (smoke(reward=str(tmp_path)), "is a directory without config.json"),
        (smoke(prompts=str(tmp_path / "none.json")), "no such file"),
        (smoke(query_len=512, response_len=600), "query_len + response_len = 512 + 600 exceeds policy"),
        (smoke(reward="rule:length:9:3", value_init="policy"), "'rule:length:MIN:MAX'"),
    ]
    for cfg, expected in cases:
        with pytest.raises(ValueError) as err:
            PPOTrainer(cfg, tmp_path / "run")
        assert expected in str(err.value)


def test_cli_help_documents_every_field_and_errors_are_clean(tmp_path):
    out = subprocess.run([sys.executable, "-m", "harness.cli", "train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for name in field_names():
        assert f"  {name} [" in out.stdout, name
    bad = subprocess.run([sys.executable, "-m", "harness.cli", "train", "--preset", "smoke", "--set",
                          "regularizer=kl2", "--out", str(tmp_path / "r")], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "regularizer='kl2' is not known" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "r").exists()


def test_a_config_file_holds_execution_settings_mixed_in_or_in_their_section(tmp_path):
    """What `harness reproduce` writes (grid-config.json: an `execution` section) and older files (every setting at
    the top level) resolve alike, the execution settings apart from the experiment's."""
    mixed, nested = tmp_path / "mixed.json", tmp_path / "nested.yaml"
    mixed.write_text(json.dumps({"preset": "smoke", "steps": 3, "threads": 2, "report_to": ["none"],
                                 "frozen_dtype": "float32"}))
    nested.write_text("preset: smoke\nsteps: 3\nexecution:\n  threads: 2\n  report_to: [none]\n")
    a, b = presets.resolve(None, str(mixed)), presets.resolve(None, str(nested))
    assert a == b and a.train.steps == 3 and a.train.frozen_dtype == "float32"
    assert a.execution == ExecutionConfig(threads=2, report_to=("none",))
    clash = tmp_path / "clash.json"
    clash.write_text(json.dumps({"threads": 1, "execution": {"threads": 2}}))
    with pytest.raises(ValueError, match="threads given both at the top level and in the 'execution' section"):
        presets.resolve("smoke", str(clash))
    with pytest.raises(ValueError, match="unknown setting 'thread'"):
        presets.resolve("smoke", None, ["thread=2"])


def test_execution_settings_are_validated_on_construction():
    with pytest.raises(ValueError, match="threads=2000 must be <= 1024"):
        ExecutionConfig(threads=2000)
    with pytest.raises(ValueError, match="device='tpu' is invalid"):
        ExecutionConfig(device="tpu")
    with pytest.raises(ValueError, match="lean_decode_step=1 is invalid: expected bool"):
        ExecutionConfig(lean_decode_step=1)
    with pytest.raises(TypeError):
        TrainConfig(threads=2)  # not an experiment setting
