"""reference='one_base' (every role on the policy's frozen base) and value_model='policy_head': the same run as the
two-base layout, a fall-back that says why, exact resume, a value head trained with the policy, and the planner."""

import subprocess
import sys

import pytest
import torch

from harness import presets
from trainers import checkpoint, models
from trainers import memory_plan as mp
from trainers.build import build_models
from trainers.heads import ScalarHeadModel, new_head, save_reward_model
from trainers.rollout import sequences
from trainers.runfolder import RunFolder
from trainers.trainer import PPOTrainer

CPU = torch.device("cpu")
LLAMA = mp.Dims.from_config(mp.KNOWN["llama-7b"])
TIMING = ("time/", "memory/")


def stable(records):
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in records]


def run(cfg, out, resume=False, log=None):
    return PPOTrainer(cfg, out, log=log or (lambda m: None)).train(resume=resume)


def assert_same_runs(a, b):
    assert len(a) == len(b)
    for x, y in zip(stable(a), stable(b)):
        assert x.keys() == y.keys()
        for key in x:
            assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-6), (x["step"], key)


def test_one_base_gives_the_run_of_the_two_base_layout(smoke, tmp_path):
    # the smoke preset: LoRA dropout 0.1, adapters folded for sampling, reward 'head:tiny-random-llama' (reads at EOS,
    # so unfinished responses get one appended), value initialised from the reward model
    # (one trainer at a time: each seeds the global generator when built, and dropout draws from it as it trains)
    shared = PPOTrainer(smoke(steps=2, reference="shared"), tmp_path / "shared", log=lambda m: None)
    counts_shared = shared.models.parameter_counts()
    start = [p.detach().clone() for p in shared.models.trainable_parameters()]
    expected = shared.train()
    one = PPOTrainer(smoke(steps=2, reference="one_base"), tmp_path / "one", log=lambda m: None)
    assert (shared.models.layout, one.models.layout) == ("shared", "one_base")
    backbone = sum(p.numel() for p in models.tiny_random_llama().model.parameters())
    counts_one = one.models.parameter_counts()
    assert counts_shared["total"] - counts_one["total"] == backbone  # the reward/value backbone is gone
    assert counts_shared["trainable"] == counts_one["trainable"]
    assert counts_one["policy_trainable"] == counts_shared["policy_trainable"]  # the value adapter is not the policy's
    # the value model starts from the same adapter and head, in the same order for the optimizer
    assert all(torch.equal(a, b) for a, b in zip(start, one.models.trainable_parameters(), strict=True))
    assert_same_runs(one.train(), expected)
    # gradient checkpointing reruns each forward in the backward, with the same adapters
    assert_same_runs(run(smoke(steps=2, reference="one_base", gradient_checkpointing=True), tmp_path / "gc"), expected)


def test_the_reference_forward_gives_the_reward_and_sampling_leaves_the_other_roles_alone(smoke):
    bundle = build_models(smoke(reference="one_base", lora_dropout=0.0), CPU)
    assert bundle.reward_reads_reference
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in bundle.policy.named_parameters():
            if "lora_B" in name:  # both trained adapters non-zero, so a leak would show
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    q = torch.tensor([[0, 1, 40, 41], [1, 42, 43, 44]])
    qmask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    toks = torch.tensor([[50, 51, 2], [52, 53, 54]])
    ids, amask, pos = sequences(q, qmask, toks)
    fresh = models.tiny_random_llama()
    with torch.inference_mode():
        before = (bundle.reward.score_at(ids, amask, pos, torch.tensor([6, 6])),
                  bundle.value.values(ids, amask, pos, start=3, length=3))
        adapted = bundle.policy(input_ids=ids, attention_mask=amask).logits
        # only the policy's own update is folded in
        with bundle.sampling_context(fold_adapters=True, few_row_products=False):
            folded = bundle.policy(input_ids=ids, attention_mask=amask).logits
        after = (bundle.reward.score_at(ids, amask, pos, torch.tensor([6, 6])),
                 bundle.value.values(ids, amask, pos, start=3, length=3))
        with bundle.reference_context():
            reference = bundle.policy(input_ids=ids, attention_mask=amask, position_ids=pos).logits
        plain = fresh(input_ids=ids, attention_mask=amask, position_ids=pos).logits
        reward_alone = ScalarHeadModel(fresh.model, bundle.reward.head).score_at(ids, amask, pos, torch.tensor([6, 6]))
    torch.testing.assert_close(folded, adapted, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(after[0], before[0], rtol=0, atol=0)
    torch.testing.assert_close(after[1], before[1], rtol=0, atol=0)
    torch.testing.assert_close(reference, plain, rtol=1e-5, atol=1e-5)  # adapters off: the unchanged base
    torch.testing.assert_close(before[0], reward_alone, rtol=1e-5, atol=1e-5)
    assert all(p.requires_grad for p in bundle.value.adapter.parameters())  # switching adapters kept them trainable


def test_a_reward_on_another_backbone_falls_back_with_a_line_saying_why(smoke, tmp_path):
    full = tmp_path / "full-rm"  # a reward model with its own backbone weights
    backbone = models.tiny_random_llama().model
    save_reward_model(ScalarHeadModel(backbone, new_head(64, zero=False, seed=1)), models.load_tokenizer(models.TINY),
                      full)
    lines = []
    trainer = PPOTrainer(smoke(reference="one_base", reward=str(full)), tmp_path / "a", log=lines.append)
    assert trainer.models.layout == "shared"
    assert any(line.startswith("reference='one_base' falls back to reference='shared' (two frozen backbones): "
                               f"reward={str(full)!r} has backbone {str(full)!r}, not the policy's base "
                               "'tiny-random-llama'") for line in lines), lines
    assert trainer.facts["layout"] == "shared"
    # a head alone naming the policy's model: one base, and the reward holds no backbone of its own
    alone = tmp_path / "head-rm"
    save_reward_model(ScalarHeadModel(backbone, new_head(64, zero=False, seed=1)), None, alone,
                      backbone_spec=models.TINY)
    lines.clear()
    trainer = PPOTrainer(smoke(reference="one_base", reward=str(alone)), tmp_path / "b", log=lines.append)
    assert trainer.models.layout == "one_base" and not any("falls back" in line for line in lines)
    assert [n for n, _ in trainer.models.reward.named_parameters()] == ["head.weight", "head.bias"]


def test_a_rule_reward_leaves_reference_and_value_on_the_base(smoke, tmp_path):
    settings = dict(steps=1, reward="rule:count:e", value_init="policy")
    expected = run(smoke(**settings), tmp_path / "shared")
    trainer = PPOTrainer(smoke(reference="one_base", **settings), tmp_path / "one", log=lambda m: None)
    assert trainer.models.layout == "one_base" and not trainer.models.reward_reads_reference
    assert_same_runs(trainer.train(), expected)


def test_settings_one_base_and_policy_head_cannot_take_are_refused_in_one_line(smoke):
    with pytest.raises(ValueError, match=r"reference='one_base' needs lora=true \(the reference is the policy with "
                                         r"adapters disabled\); use reference='copy'"):
        smoke(reference="one_base", lora=False)
    with pytest.raises(ValueError, match=r"value_model='policy_head' reads the policy's own hidden states, so "
                                         r"value_init='reward' cannot apply; set value_init='policy'"):
        smoke(value_model="policy_head")
    with pytest.raises(ValueError, match=r"value_model='value_head' is invalid: expected one of 'separate', "
                                         r"'policy_head'"):
        smoke(value_model="value_head")


def test_one_base_resumes_exactly_and_checkpoints_the_value_adapter(smoke, tmp_path):
    cfg = smoke(steps=4, checkpoint_every=2, reference="one_base")
    full = run(cfg, tmp_path / "full")
    part = tmp_path / "part"
    run(smoke(steps=2, checkpoint_every=2, reference="one_base"), part)
    latest = RunFolder(part).latest_checkpoint()
    assert not (latest / "policy" / "value").exists()  # the exported policy is its own adapter only
    saved = checkpoint.load_tensors(latest / "value.safetensors")
    assert {"head.weight", "head.bias"} < set(saved) and any("_A.weight" in k for k in saved)
    assert stable(run(cfg, part, resume=True)) == stable(full)


def test_a_value_head_on_the_policy_trains_with_it(smoke, tmp_path):
    cfg = smoke(steps=2, value_model="policy_head", value_init="policy")
    trainer = PPOTrainer(cfg, tmp_path / "head", log=lambda m: None)
    assert trainer.models.value.adapter is not None and not list(trainer.models.value.adapter.parameters())
    records = trainer.train()
    assert all(torch.isfinite(torch.tensor(r["ppo/loss/value"])) for r in records)
    assert records[0]["ppo/val/mean"] == 0.0 and records[1]["ppo/val/mean"] != 0.0  # zero head, then trained
    assert trainer.models.value.head.weight.abs().sum() > 0
    assert not (RunFolder(tmp_path / "head").latest_checkpoint() / "policy" / "value").exists()
    # the value loss's gradient reaches the policy's adapter (TRL <= 0.11's layout): with no advantage it is all there is
    with torch.no_grad():
        trainer.models.value.head.weight.fill_(0.5)
    from trainers.rollout import collect_chunk

    ro = collect_chunk(trainer.models, cfg, trainer.execution, trainer.batch_prompts(0), trainer.generator, CPU,
                       {"rollout": 0.0, "score": 0.0})
    trainer.models.policy.train()
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer._micro_step(ro, torch.zeros_like(ro.values), ro.values + 1.0, torch.tensor([0, 1]), 10.0)
    grads = [p.grad for n, p in trainer.models.policy.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    # one_base with a head on the policy: reference and reward on the base, nothing else added
    one = PPOTrainer(smoke(value_model="policy_head", value_init="policy", reference="one_base"), tmp_path / "one",
                     log=lambda m: None)
    assert one.models.layout == "one_base" and one.models.base.lora_layers[0].lora_A.keys() == {"default"}


def test_a_reward_adapter_of_the_base_is_run_as_a_frozen_named_adapter(smoke, tmp_path):
    backbone = models.tiny_random_llama().model
    gen = torch.Generator().manual_seed(3)
    names = [f"layers.{i}.self_attn.{m}" for i in range(2) for m in ("q_proj", "v_proj")]
    tensors = {}
    for name in names:
        layer = backbone.get_submodule(name)
        tensors[f"{name}.lora_A.weight"] = 0.3 * torch.randn(4, layer.in_features, generator=gen)
        tensors[f"{name}.lora_B.weight"] = 0.3 * torch.randn(layer.out_features, 4, generator=gen)
    rm = tmp_path / "adapter-rm"
    save_reward_model(ScalarHeadModel(backbone, new_head(64, zero=False, seed=1)), None, rm, backbone_spec=models.TINY,
                      adapter=({"r": 4, "lora_alpha": 8.0, "target_modules": ["q_proj", "v_proj"]}, tensors))
    two = build_models(smoke(reward=str(rm)), CPU)  # the adapter merged into a second backbone
    one = build_models(smoke(reward=str(rm), reference="one_base"), CPU)
    assert one.layout == "one_base" and not one.reward_reads_reference and one.reward.names == ("reward",)
    assert one.value.names == ("reward", "value")  # value_init='reward': the value model starts as the reward model
    q, qmask, toks = torch.tensor([[1, 40, 41, 42]]), torch.ones(1, 4, dtype=torch.long), torch.tensor([[50, 51, 2]])
    ids, amask, pos = sequences(q, qmask, toks)
    with torch.inference_mode():
        merged = two.reward.score_at(ids, amask, pos, torch.tensor([6]))
        adapted = one.reward.score_at(ids, amask, pos, torch.tensor([6]))
        plain = ScalarHeadModel(models.tiny_random_llama().model, one.reward.head).score_at(ids, amask, pos,
                                                                                            torch.tensor([6]))
    torch.testing.assert_close(adapted, merged, rtol=1e-4, atol=1e-5)
    assert (adapted - plain).abs().max() > 1e-3  # the adapter matters
    reward_tensors = [p for layer in one.base.lora_layers if "reward" in layer.lora_A
                      for p in layer.lora_A["reward"].parameters()]
    assert reward_tensors and not any(p.requires_grad for p in reward_tensors)
    assert not {id(p) for p in reward_tensors} & {id(p) for p in one.trainable_parameters()}


def test_the_planner_holds_one_backbone_fewer_in_one_base_mode():
    paper = dict(policy_dims=LLAMA, reward_dims=LLAMA, gpus=1, frozen_dtype="bfloat16")
    shared = mp.plan(presets.resolve("paper", None, ["reference=shared"]).train, **paper)
    one = mp.plan(presets.resolve("paper", None, ["reference=one_base"]).train, **paper)
    assert shared.total - one.total == LLAMA.params * 2  # one bf16 backbone
    assert one.components["weights/policy"] == LLAMA.params * 2 and one.components["weights/reward"] == 0
    head = mp.plan(presets.resolve("paper", None, ["reference=one_base", "value_model=policy_head",
                                                   "value_init=policy"]).train, **paper)
    assert head.components["trainable/weights+grads+adam"] < one.components["trainable/weights+grads+adam"]
    copy_head = mp.plan(presets.resolve("paper", None, ["value_model=policy_head", "value_init=policy"]).train,
                        **paper)
    copy_sep = mp.plan(presets.resolve("paper", None, ["value_init=policy"]).train, **paper)
    assert copy_sep.total - copy_head.total > LLAMA.params * 2  # no value backbone


def test_plan_names_the_single_gpu_and_its_assumption():
    out = subprocess.run([sys.executable, "-m", "harness.cli", "plan", "--preset", "paper", "--set",
                          "reference=one_base"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "smallest listed GPU that holds it is a100-40gb" in out.stdout
    assert "falls back to reference='shared'" in out.stdout and "an assumption" in out.stdout


def test_plan_reads_a_random_llamas_shape_without_files():
    """LLaMA-33B (a `random-llama:` shape, no files) at the paper's settings in one-base bf16 mode: one H200."""
    out = subprocess.run([sys.executable, "-m", "harness.cli", "plan", "--preset", "paper", "--set",
                          "policy=random-llama:33b", "--set", "reward=head:random-llama:33b", "--set",
                          "reference=one_base"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "not on disk" not in out.stdout
    cfg = presets.resolve("paper", None, ["policy=random-llama:33b", "reward=head:random-llama:33b",
                                          "reference=one_base"]).train
    assert mp.plan(cfg, gpus=1).components["weights/policy"] == 32_528_943_616 * 2  # bf16 on a GPU
    assert "smallest listed GPU that holds it is h200" in out.stdout


def test_plan_falls_back_per_model_and_names_a_bad_shape_by_its_field():
    """A policy whose shape is known and a reward that is not on disk: each model planned on its own terms."""
    out = subprocess.run([sys.executable, "-m", "harness.cli", "plan", "--preset", "paper", "--set",
                          "policy=random-llama:7b"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "(reward 'models/alpaca-farm-reward-model-human' is not on disk: planned as LLaMA-7B" in out.stdout
    assert "(policy" not in out.stdout
    bad = subprocess.run([sys.executable, "-m", "harness.cli", "plan", "--preset", "paper", "--set",
                          "policy=random-llama:9b"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("harness: error: policy='random-llama:9b': expected")
    assert len(bad.stderr.strip().splitlines()) == 1
