"""The proxy reward model's machinery: a Bradley-Terry head fitted on a frozen backbone's features learns a known
scoring rule from noisy pair labels well enough to rank held-out pairs above chance."""

import random

import pytest
import torch

from evals.preference_data import all_pairs, split_instructions
from trainers import models
from trainers.heads import ScalarHeadModel, new_head
from trainers.reward_fit import fit_bradley_terry_head, pair_accuracy
from trainers.sampling import position_ids_from_mask


def test_fit_recovers_a_linear_rule_and_reads_raw_features():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400, 6, generator=gen) * torch.tensor([1.0, 10.0, 0.1, 1.0, 1.0, 1.0]) + 5.0
    truth = torch.tensor([1.0, -0.2, 8.0, 0.0, 0.0, 0.0])
    pairs = torch.randint(0, 400, (3000, 2), generator=gen)
    labels = ((x[pairs[:, 1]] - x[pairs[:, 0]]) @ truth > 0).float()
    head = fit_bradley_terry_head(x, pairs, labels, l2=1e-4)
    with torch.no_grad():
        r = head(x).squeeze(-1)
    assert pair_accuracy(r, pairs, labels) > 0.97
    assert abs(float(r.mean())) < 1e-4  # the bias centres the training rewards
    w = head.weight[0].detach()
    assert torch.nn.functional.cosine_similarity(w, truth, dim=0) > 0.95


def test_fit_refuses_malformed_pairs():
    with pytest.raises(ValueError, match="no labelled pairs"):
        fit_bradley_terry_head(torch.zeros(3, 2), torch.zeros(0, 2, dtype=torch.long), torch.zeros(0))
    with pytest.raises(ValueError, match="pairs must be"):
        fit_bradley_terry_head(torch.zeros(3, 2), torch.zeros(4, 3, dtype=torch.long), torch.zeros(4))


def test_a_head_on_a_tiny_random_model_learns_a_known_rule_from_noisy_labels():
    """Rule: the share of token 7 in a sequence. Labels from the rule with 25% flipped; held-out sequences."""
    torch.manual_seed(0)
    backbone = models.tiny_random_llama().model.float().eval()
    reader = ScalarHeadModel(backbone, new_head(backbone.config.hidden_size, zero=True, seed=0))
    rng = random.Random(0)
    seqs = []
    for _ in range(240):
        n = rng.randint(6, 14)
        share = rng.random()
        seqs.append([7 if rng.random() < share else rng.randint(10, 200) for _ in range(n)])
    width = max(map(len, seqs))
    ids = torch.tensor([[0] * (width - len(s)) + s for s in seqs])
    mask = (torch.arange(width) >= width - torch.tensor([len(s) for s in seqs]).unsqueeze(1)).long()
    with torch.no_grad():
        feats = reader.hidden_states(ids, mask, position_ids_from_mask(mask))[:, -1]
    rule = torch.tensor([s.count(7) / len(s) for s in seqs])
    train, held = range(0, 160), range(160, 240)
    pick = lambda idx, n: torch.tensor([rng.sample(list(idx), 2) for _ in range(n)])  # noqa: E731
    tr, te = pick(train, 1200), pick(held, 400)
    truth = lambda p: (rule[p[:, 1]] > rule[p[:, 0]]).float()  # noqa: E731
    noisy = torch.tensor([1 - y if rng.random() < 0.25 else y for y in truth(tr).tolist()])
    head = fit_bradley_terry_head(feats, tr, noisy, l2=1e-2)
    with torch.no_grad():
        r = head(feats).squeeze(-1)
    keep = rule[te[:, 0]] != rule[te[:, 1]]
    held_acc = pair_accuracy(r, te[keep], truth(te)[keep])
    assert held_acc > 0.75, held_acc  # chance is 0.5


def test_pairs_and_the_instruction_split():
    samples = [{"id": f"pref-{i}", "instruction": f"q{i}", "input": "", "outputs": ["a", "b", "a" if i else "c"]}
               for i in range(20)]
    pairs = all_pairs(samples)
    # instruction 0 has three distinct outputs (3 pairs); the others repeat "a" (2 pairs each)
    assert len(pairs) == 3 + 19 * 2 and all(p.output_1 != p.output_2 for p in pairs)
    train, held = split_instructions([p.id.split(":")[0] for p in pairs], seed=1)
    assert len(held) == 3 and not train & held and len(train | held) == 20
    assert split_instructions([f"pref-{i}" for i in range(20)], seed=1) == (train, held)


def test_cross_validation_keeps_each_instruction_in_one_fold():
    from trainers.reward_fit import cross_validated_agreement

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(200, 4, generator=gen)
    truth = torch.tensor([1.0, -1.0, 0.5, 0.0])
    groups = [f"q{i // 10}" for i in range(0, 400, 2)]  # 20 instructions, 10 pairs each
    pairs = torch.stack([torch.arange(0, 200), torch.roll(torch.arange(0, 200), 1)], 1)
    gold = ((x[pairs[:, 1]] - x[pairs[:, 0]]) @ truth > 0).double()
    gold[0] = float("nan")  # a tie is never scored
    shares = cross_validated_agreement(x, pairs, gold.nan_to_num(0.0), gold, groups, l2=1e-3, folds=5)
    assert len(shares) == 5 and min(shares) > 0.9
    # the split is by instruction: with one instruction, no fold has another to be fitted on
    assert cross_validated_agreement(x, pairs, gold.nan_to_num(0.0), gold, ["q"] * 200, l2=1e-3, folds=5) == []


@pytest.mark.parametrize("kw,message", [({"samples": 1}, "samples=1 must be >= 2"), ({"l2": -1.0}, "l2=-1.0 must be"),
                                        ({"l2": float("nan")}, "l2=nan must be"), ({"method": "svm"}, "method='svm'"),
                                        ({"read": "last_token"}, "read='last_token' is not known")])
def test_prepare_refuses_bad_settings_before_any_work(kw, message, tmp_path, monkeypatch):
    from harness import presets
    from harness.prepare import prepare

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=message):
        prepare("smoke-test", presets.resolve("smoke"), results=None, log=lambda m: None, **kw)
    assert not (tmp_path / "cache").exists()


def test_a_head_only_reward_directory_names_its_backbone_and_scores_like_the_full_one(tmp_path, monkeypatch):
    """A head on an unchanged model is saved as the head alone, naming the model: it loads the named backbone,
    passes the pre-flight check, and scores exactly as the same head saved with the backbone's weights."""
    from trainers import heads, preflight
    from trainers.config import TrainConfig
    from harness import presets

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    backbone = models.tiny_random_llama().model.float().eval()
    model = ScalarHeadModel(backbone, new_head(backbone.config.hidden_size, zero=False, seed=5),
                            score_token="response_mean")
    tok = models.load_tokenizer(models.TINY)
    alone = heads.save_reward_model(model, tok, tmp_path / "alone", backbone_spec=models.TINY)
    full = heads.save_reward_model(model, tok, tmp_path / "full")
    assert sorted(p.name for p in alone.iterdir()) == [heads.HEAD_META, heads.HEAD_WEIGHTS]
    assert heads.reward_backbone_spec(str(alone)) == models.TINY and heads.reward_backbone_spec(str(full)) == str(full)
    ids = torch.tensor([[0, 5, 6, 7, 8, 9]])
    mask = (ids != 0).long()
    pos = position_ids_from_mask(mask)
    first, last = torch.tensor([3]), torch.tensor([5])
    with torch.no_grad():
        a, b = (heads.load_reward_model(str(d), torch.float32, seed=0).score_at(ids, mask, pos, last, first)
                for d in (alone, full))
    assert a.item() == pytest.approx(b.item(), abs=1e-6)
    cfg = TrainConfig(**dict(presets.preset("smoke"), reward=str(alone)))
    assert preflight.problems(cfg) == []


def test_prepare_installs_the_shipped_proxy_when_nothing_is_prepared(tmp_path, monkeypatch):
    """With an empty cache, a proxy shipped for the preset with the requested settings is installed (kilobytes,
    no sampling); other settings, or --force, do not take it."""
    import json
    import shutil

    from harness import prepare as prep
    from harness import presets
    from trainers import heads

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    shipped = tmp_path / "shipped" / "smoke-test"
    backbone = models.tiny_random_llama().model.float().eval()
    heads.save_reward_model(ScalarHeadModel(backbone, new_head(backbone.config.hidden_size, zero=False, seed=1),
                                            score_token="response_mean"), None, shipped / "reward-model",
                            backbone_spec=models.TINY)
    judge = prep.gold_judge("smoke-test").identity()
    report = {"policy": models.TINY, "method": "head", "samples_per_instruction": 8, "l2": 1.0,
              "read": "response_mean", "heldout_accuracy_gold": 71.0, "judge": judge}
    (shipped / "prepare.json").write_text(json.dumps(report))
    monkeypatch.setattr(prep, "PACKAGED", tmp_path / "shipped")
    cfg = presets.resolve("smoke")
    lines = []
    assert prep.prepare("smoke-test", cfg, results=None, log=lines.append) == report
    assert "installed the proxy reward model shipped for preset smoke-test" in lines[0]
    assert heads.is_reward_model_dir(heads.prepared_dir("smoke-test"))
    # prepared by the same judge: kept; labelled by another version of it: refitted (sampling is where it starts)
    lines.clear()
    assert prep.prepare("smoke-test", cfg, results=None, log=lines.append) == report
    assert lines[0].startswith("prepare: reward model already at")
    cached = heads.prepared_dir("smoke-test").parent / "prepare.json"
    cached.write_text(json.dumps(dict(report, judge=dict(judge, version="rubric-0:old"))))

    def sampling(*args, **kwargs):
        raise RuntimeError("sampling started")

    monkeypatch.setattr(prep, "sample_responses", sampling)
    lines.clear()
    with pytest.raises(RuntimeError, match="sampling started"):
        prep.prepare("smoke-test", cfg, results=None, log=lines.append)
    assert lines == [f"prepare: the reward model at {heads.prepared_dir('smoke-test')} was prepared with "
                     f"judge=simulated (rubric-0:old); refitting with judge=simulated ({judge['version']})"]
    shutil.rmtree(tmp_path / "cache")
    wanted = {"method": "head", "samples_per_instruction": 8, "l2": 1.0, "read": "response_mean", "judge": judge}
    assert prep._install_packaged("smoke-test", models.TINY, dict(wanted, l2=3.0), print) is None
    assert prep._install_packaged("smoke-test", models.TINY, dict(wanted, judge=dict(judge, version="x")), print) is None
    assert prep._install_packaged("smoke-test", "other-policy", {"method": "head"}, print) is None
    assert not (tmp_path / "cache").exists()


def test_the_proxy_learns_the_preset_grids_judge_and_ships_where_a_fresh_install_finds_it(tmp_path, monkeypatch):
    """`harness prepare` labels with the preset grid's offline judge (the rubric for tiny, the learned judge for
    miniature) and refuses a grid judged online; `--ship` puts the head where `_install_packaged` takes it from."""
    import json

    from harness import prepare as prep
    from trainers import heads

    assert prep.gold_judge("tiny").name == "simulated" and prep.gold_judge("smoke-test").name == "simulated"
    assert prep.gold_judge("miniature").name == "learned"
    with pytest.raises(ValueError, match="preset='paper' is judged by 'openai', which is not an offline judge"):
        prep.gold_judge("paper")
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(prep, "PACKAGED", tmp_path / "shipped")
    backbone = models.tiny_random_llama().model.float().eval()
    made = heads.save_reward_model(ScalarHeadModel(backbone, new_head(backbone.config.hidden_size, zero=False, seed=2),
                                                   score_token="response_mean"), None, tmp_path / "fitted",
                                   backbone_spec=models.TINY)
    report = {"policy": models.TINY, "method": "head", "samples_per_instruction": 8, "l2": 1.0,
              "read": "response_mean", "heldout_accuracy_gold": 64.0, "judge": prep.gold_judge("smoke-test").identity()}
    dest = prep.ship_prepared("smoke-test", made, report)
    assert dest == tmp_path / "shipped" / "smoke-test"
    assert json.loads((dest / "prepare.json").read_text()) == report
    assert prep._install_packaged("smoke-test", models.TINY, {k: report[k] for k in
                                                               ("method", "samples_per_instruction", "l2", "read",
                                                                "judge")},
                                  print) == report
    # shipping again replaces the copy whole
    prep.ship_prepared("smoke-test", made, dict(report, heldout_accuracy_gold=65.0))
    assert json.loads((dest / "prepare.json").read_text())["heldout_accuracy_gold"] == 65.0
    assert sorted(p.name for p in (tmp_path / "shipped").iterdir()) == ["smoke-test"]


def test_the_shipped_miniature_proxy_is_the_one_its_record_describes_and_learned_the_shipped_judge():
    """The miniature proxy was labelled by one version of the learned judge: refitting the judge without refitting
    the proxy (`harness prepare --preset miniature --force --ship`) would leave a proxy of another judge."""
    import json
    from pathlib import Path

    from evals.learned_judge import LearnedJudge
    from harness.prepare import PACKAGED
    from harness.results import ResultsStore
    from trainers.identity import directory_sha256

    shipped = PACKAGED / "miniature"
    report = json.loads((shipped / "prepare.json").read_text())
    assert report["judge"]["name"] == "learned" and report["judge"]["version"] == LearnedJudge().version
    store = ResultsStore(Path(__file__).resolve().parents[1] / "results")
    # a refit of the judge adds a record of its own proxy; the one of the shipped judge describes the shipped head
    [rec] = [r for r in store.records() if r["evaluator"] == "proxy_rm" and r["run_id"] == "prepared:miniature"
             and r["judge"] == report["judge"]]
    assert rec["metrics"]["gold_agreement"] == pytest.approx(report["heldout_accuracy_gold"])
    assert rec["judge"] == report["judge"] and rec["metrics"]["train_pairs"] == report["train_pairs"]
    assert rec["settings"]["reward_model"] == f"sha256:{directory_sha256(shipped / 'reward-model')[:16]}"
