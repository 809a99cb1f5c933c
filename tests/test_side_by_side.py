"""The side-by-side benchmark's pieces that run without TRL: its table, its FLOP count, its mode rows' checks."""

import json

from benchmarks import side_by_side as sbs

ROW = {"s_per_step": 10.0, "generation": 3.0, "frozen_forwards": 2.0, "training": 5.0, "tokens_per_s": 100.0,
       "peak_bytes": 2 * 2**30}


def _result(**extra) -> dict:
    return {"command": "python -m benchmarks.side_by_side --modes", "machine": "Some CPU, 2 cores, x86_64",
            "summary": {"harness": ROW, "trl": dict(ROW, s_per_step=20.0, peak_bytes=8 * 2**30)},
            "ratios": {"speedup_s_per_step": 2.0, "memory_ratio": 0.25},
            "compute": {"training_gflop": 500.0, "training_gflops_per_s": 100.0,
                        "matmul_gflops_per_s": {"float32": 150.0, "bfloat16": 1.0},
                        "fraction_of_best_matmul_rate": 0.67},
            "levers": {}, "modes": {}, **extra}


def test_the_table_gains_a_modes_section_with_skipped_rows_named():
    modes = {"one frozen base": {"setting": "reference=one_base", **dict(ROW, s_per_step=8.0)},
             "value head": {"setting": "value_model=policy_head", "skipped": "unknown setting 'value_model'"}}
    text = sbs.render(_result(modes=modes))
    assert "| one frozen base | `reference=one_base` | 8.0 | 3.0 | 2.0 | 5.0 | 2.00 GiB | 0.80x |" in text
    assert "| value head | `value_model=policy_head` | skipped: our trainer refuses the setting |" in text
    assert "Each lever off" not in text  # no lever rows, no lever section
    assert "Modes:" not in sbs.render(_result())


def test_the_committed_result_renders_as_committed():
    stem = sbs.RESULTS / "side_by_side-lora-1ep"
    assert sbs.render(json.loads(stem.with_suffix(".json").read_text())) == stem.with_suffix(".md").read_text()


def test_mode_rows_are_data_and_refused_settings_are_named(tmp_path):
    assert sbs.MODES and all("=" in setting for setting in sbs.MODES.values())
    base = sbs.as_settings(sbs.work_unit(tmp_path / "prompts.json", steps=2, epochs=1, mode="lora"))
    assert sbs.refusal(base) is None
    assert "no_such_field" in sbs.refusal([*base, "no_such_field=1"])
    assert "reference" in sbs.refusal([*base, "reference=nowhere"])


def test_training_flops_by_hand():
    # h=2, intermediate 3, 1 layer, 1 head, vocab 5; one prompt of 1 token and a 1-token response (n = 2):
    # linear weights 2*4 + 2*4 + 3*2*3 = 34; forward 2*34*2 + 4*1*2*2^2/2 = 152; LM head 2*2*5*1 = 20;
    # LoRA: policy (152 + 20) * 2, value 152 * 2
    cfg = {"hidden_size": 2, "intermediate_size": 3, "num_hidden_layers": 1, "num_attention_heads": 1,
           "num_key_value_heads": 1, "vocab_size": 5}
    assert sbs.count_training_flops(cfg, [1], 1, 1, "lora") == 648
    assert sbs.count_training_flops(cfg, [1], 1, 2, "full") == 2 * (172 * 3 + 152 * 3)


def test_the_json_names_the_cpu_and_torch():
    env = sbs.environment({"float32": 1.0, "bfloat16": 2.0})
    assert env["cpu"] == sbs.machine() and env["torch"] and env["matmul_gflops_per_s"]["bfloat16"] == 2.0
