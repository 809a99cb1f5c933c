"""Prompt data, the Alpaca template, rule rewards and the KL controllers."""

import json
from pathlib import Path

import pytest
import torch

from harness.presets import INSTRUCTIONS
from trainers import data
from trainers.kl_control import AdaptiveKLController, FixedKLController, make_kl_controller
from trainers.rewards import parse_rule


def test_alpaca_template_with_and_without_input():
    no_input = data.format_prompt({"instruction": "Name a colour.", "input": ""}, "alpaca")
    assert no_input == ("Below is an instruction that describes a task. Write a response that appropriately "
                        "completes the request.\n\n### Instruction:\nName a colour.\n\n### Response:")
    with_input = data.format_prompt({"instruction": "Translate.", "input": "Bonjour"}, "alpaca")
    assert "paired with an input" in with_input
    assert with_input.endswith("### Instruction:\nTranslate.\n\n### Input:\nBonjour\n\n### Response:")
    assert data.format_prompt({"instruction": "Translate.", "input": "Bonjour"}, "raw") == "Translate.\n\nBonjour"
    with pytest.raises(ValueError, match="chat template"):
        data.format_prompt({"instruction": "x"}, "chat", tokenizer=None)


def test_records_load_from_json_and_jsonl_with_split_filter(tmp_path):
    rows = [{"instruction": "a", "input": "", "split": "val"}, {"instruction": "b", "split": "unlabeled"}]
    (tmp_path / "p.json").write_text(json.dumps(rows))
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert data.load_records(str(tmp_path / "p.json"), "unlabeled") == [{"instruction": "b", "input": ""}]
    assert len(data.load_records(str(tmp_path / "p.jsonl"))) == 2
    with pytest.raises(ValueError, match="holds no records"):
        data.load_records(str(tmp_path / "p.json"), "eval")
    (tmp_path / "bad.json").write_text(json.dumps([{"prompt": "x"}]))
    with pytest.raises(ValueError, match="record 0 has no string 'instruction'"):
        data.load_records(str(tmp_path / "bad.json"))


def test_source_specs_are_checked_without_loading():
    assert data.describe_source_error("hf:tatsu-lab/alpaca_farm:alpaca_instructions:unlabeled") is None
    assert "malformed" in data.describe_source_error("hf:tatsu-lab/alpaca_farm")
    assert "no such file" in data.describe_source_error("/nowhere/prompts.json")


def test_bundled_instructions_have_every_split():
    records = json.loads(Path(INSTRUCTIONS).read_text())
    splits = {r["split"] for r in records}
    assert splits == {"preference", "unlabeled", "val", "eval"}
    assert len(data.load_records(INSTRUCTIONS, "unlabeled")) >= 100


def test_rule_rewards():
    count = parse_rule("rule:count:ab")
    assert count(["abab", "xyz", "ab:ab"], torch.tensor([4, 3, 5])).tolist() == [2.0, 0.0, 2.0]
    assert parse_rule("rule:count:a:b")(["a:b a:b"], torch.tensor([7])).item() == 2.0
    band = parse_rule("rule:length:3:5")
    assert band(["", "", "", ""], torch.tensor([1, 3, 5, 10])).tolist() == pytest.approx([-0.4, 1.0, 1.0, -1.0])
    for bad in ("rule:count:", "rule:length:5:3", "rule:length:a:b", "rule:bleu"):
        with pytest.raises(ValueError, match="is not a valid rule"):
            parse_rule(bad)


def test_adaptive_kl_controller_follows_its_formula():
    ctl = make_kl_controller("adaptive", 0.1, target_kl=6.0, kl_horizon=10000)
    assert isinstance(ctl, AdaptiveKLController)
    ctl.update(current_kl=9.0, n_steps=256)  # error = clip(9/6 - 1, -.2, .2) = 0.2
    assert ctl.kl_coef == pytest.approx(0.1 * (1 + 0.2 * 256 / 10000))
    ctl.update(current_kl=5.4, n_steps=256)  # error = -0.1
    assert ctl.kl_coef == pytest.approx(0.1 * (1 + 0.2 * 256 / 10000) * (1 - 0.1 * 256 / 10000))
    fixed = make_kl_controller("fixed", 0.02, 6.0, 10000)
    fixed.update(100.0, 256)
    assert isinstance(fixed, FixedKLController) and fixed.kl_coef == 0.02
    with pytest.raises(ValueError, match="valid: fixed, adaptive"):
        make_kl_controller("pid", 0.1, 6.0, 10)
