"""A run's one identity: the same experiment gets the same id anywhere; any input that changes its result changes it."""

import dataclasses
import inspect
import shutil
import typing

from harness import presets
from trainers import config, execution, identity, models, regularizers
from trainers.heads import ScalarHeadModel, new_head, save_reward_model


def _reward_dir(path, seed):
    backbone = models.tiny_random_llama().model.float()
    model = ScalarHeadModel(backbone, new_head(backbone.config.hidden_size, zero=False, seed=seed))
    return save_reward_model(model, models.load_tokenizer(models.TINY), path)


def test_execution_settings_and_folders_do_not_change_the_id(smoke, tmp_path, prompt_file):
    a = identity.run_id(smoke())
    copy = tmp_path / "elsewhere.json"
    shutil.copy(prompt_file, copy)
    assert identity.run_id(smoke(prompts=str(copy))) == a  # files are named by content, not path
    assert a.startswith("kl-lora-s42-") and len(a.rsplit("-", 1)[1]) == 12


def _other_value(name: str, value):
    """Values of field `name` other than `value`, the likeliest valid first."""
    if isinstance(value, bool):
        return [not value]
    if typing.get_origin(config.field_types()[name]) is typing.Literal:
        return [v for v in typing.get_args(config.field_types()[name]) if v != value]
    if value is None:
        return [-1.0]
    if isinstance(value, int):
        return [v for v in (value * 2, value + 1, value // 2) if v != value]
    if isinstance(value, float):
        return [value / 2 if value else 0.5, value * 2]
    if isinstance(value, tuple):
        return [value[:1], ("q_proj", "gate_proj")]
    return {"regularizer": [r for r in regularizers.REGULARIZERS if r != value]}.get(name, [value + "-other", "val"])


# fields that change the id only together with another (the pair alone is valid)
COMPANIONS = {"value_model": {"value_init": "policy"}, "lora": {"reference": "copy"}}


def test_every_experiment_setting_changes_the_id(smoke, tmp_path):
    """The id is a function of TrainConfig alone, and of all of it: a setting that computes something else gives
    another run (those of `identity.LATER_SETTINGS` too, at any value but the one runs had before them)."""
    other_prompts = tmp_path / "other.json"
    other_prompts.write_text('[{"instruction": "Write one sentence about lakes.", "input": ""}]')
    unchanged = []
    for name in config.field_names():
        base = smoke(**COMPANIONS.get(name, {}))
        candidates = [str(other_prompts)] if name == "prompts" else _other_value(name, getattr(base, name))
        for value in candidates:
            try:
                changed = dataclasses.replace(base, **{name: value})
            except ValueError:
                continue
            if identity.run_id(changed) == identity.run_id(base):
                unchanged.append(name)
            break
        else:
            raise AssertionError(f"no valid other value of {name} tried: {candidates}")
    assert unchanged == []


def test_execution_settings_never_reach_the_id(smoke):
    """run_id reads TrainConfig alone, which holds no execution setting: any ExecutionConfig gives the same id."""
    assert list(inspect.signature(identity.run_id).parameters) == ["cfg"]
    assert not set(config.field_names()) & set(execution.field_names())
    base = presets.resolve("smoke")
    sets = {"threads": "3", "device": "cpu", "tune_host_allocator": "false", "group_by_length": "false",
            "merge_adapters_for_rollout": "false", "few_row_decode_products": "false", "lean_decode_step": "false",
            "packed_decode_weights": "false", "report_to": "none", "tracker_group": "other"}
    assert set(sets) == set(execution.field_names())  # a new execution setting is added here
    for name, text in sets.items():
        run = presets.resolve("smoke", None, [f"{name}={text}"])
        assert run.execution != base.execution and run.train == base.train, name
        assert identity.run_id(run.train) == identity.run_id(base.train)


def test_settings_and_input_contents_change_the_id(smoke, tmp_path, prompt_file):
    base = identity.run_id(smoke())
    assert identity.run_id(smoke(kl_coef=0.05)) != base
    edited = tmp_path / "edited.json"
    edited.write_text(open(prompt_file).read().replace("rivers", "lakes"))
    assert identity.run_id(smoke(prompts=str(edited))) != base


def test_a_retrained_reward_model_gives_a_new_id(smoke, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    rm = tmp_path / "rm"
    _reward_dir(rm, seed=1)
    first = identity.run_id(smoke(reward=str(rm)))
    assert identity.run_id(smoke(reward=str(rm))) == first  # cached digest, same answer
    shutil.rmtree(rm)
    _reward_dir(rm, seed=2)  # same path, other weights
    assert identity.run_id(smoke(reward=str(rm))) != first


def test_an_unprepared_reward_model_makes_the_id_provisional(smoke, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    cfg = smoke(reward="prepared:nowhere")
    assert identity.is_provisional(cfg)
    assert identity.model_fingerprint("prepared:nowhere") == "absent:prepared:nowhere"
    assert not identity.is_provisional(smoke())


def test_reproduce_derives_the_ids_again_once_the_reward_model_is_prepared(tmp_path, monkeypatch):
    from harness import grid
    from harness.reproduce import ids_after_prepare
    from trainers.heads import prepared_dir

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    g = grid.build_grid(("table2",), "smoke", overrides=("reward=prepared:later",))
    assert g.provisional and ids_after_prepare(g) is g  # nothing prepared yet: the same ids
    before = [r.run_id for r in g.runs]
    _reward_dir(prepared_dir("later"), seed=1)  # what `harness prepare` writes
    assert not g.provisional  # the check looks at the disk, so it cannot tell that the ids are stale ...
    fresh = ids_after_prepare(g)  # ... the ids themselves must be compared
    assert not set(before) & {r.run_id for r in fresh.runs}
    assert ids_after_prepare(fresh) is fresh
