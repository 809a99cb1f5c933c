"""A run's one identity: the same experiment gets the same id anywhere; any input that changes its result changes it."""

import shutil


from trainers import identity, models
from trainers.heads import ScalarHeadModel, new_head, save_reward_model


def _reward_dir(path, seed):
    backbone = models.tiny_random_llama().model.float()
    model = ScalarHeadModel(backbone, new_head(backbone.config.hidden_size, zero=False, seed=seed))
    return save_reward_model(model, models.load_tokenizer(models.TINY), path)


def test_execution_settings_and_folders_do_not_change_the_id(smoke, tmp_path, prompt_file):
    a = identity.run_id(smoke(threads=1))
    assert a == identity.run_id(smoke(threads=2, group_by_length=False, device="cpu"))
    copy = tmp_path / "elsewhere.json"
    shutil.copy(prompt_file, copy)
    assert identity.run_id(smoke(threads=1, prompts=str(copy))) == a  # files are named by content, not path
    assert a.startswith("kl-lora-s42-") and len(a.rsplit("-", 1)[1]) == 12


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
