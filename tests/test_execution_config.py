"""A run is (TrainConfig, ExecutionConfig): how it executes may change on resume, what it computes may not, and run
folders written when both were one mapping (config.json, checkpoints' resume hashes) still load and resume."""

import json
import shutil
from pathlib import Path

import pytest

from trainers import identity
from trainers.errors import UserError
from trainers.execution import ExecutionConfig
from trainers.identity import without_later_defaults
from trainers.resumption import settings_hash
from trainers.run_config import RunConfig
from trainers.runfolder import RunFolder, resume_hash
from trainers.trainer import PPOTrainer

ROOT = Path(__file__).resolve().parents[1]
# the execution settings config.json held among the experiment's before they were apart (its old layout)
MIXED_IN = ("threads", "device", "group_by_length", "merge_adapters_for_rollout", "few_row_decode_products",
            "lean_decode_step", "packed_decode_weights", "report_to", "tracker_group")
QUIET = dict(log=lambda _m: None)


def _train(cfg, out, execution=ExecutionConfig(report_to=("none",)), resume=False):
    return PPOTrainer(cfg, out, execution=execution, **QUIET).train(resume=resume)


def test_a_resume_may_change_threads_and_levers_but_not_the_experiment_or_device(smoke, tmp_path):
    out = tmp_path / "run"
    _train(smoke(steps=1, checkpoint_every=1), out, ExecutionConfig(threads=1, report_to=("none",)))
    faster = ExecutionConfig(threads=2, group_by_length=False, lean_decode_step=False, report_to=("none",))
    records = _train(smoke(steps=2, checkpoint_every=1), out, faster, resume=True)
    assert [r["step"] for r in records] == [1, 2]
    assert RunFolder(out).read_execution() == faster.to_dict()  # config.json says how it last ran
    with pytest.raises(UserError, match=r"kl_coef: 0\.02 -> 0\.05"):
        _train(smoke(steps=3, checkpoint_every=1, kl_coef=0.05), out, faster, resume=True)
    with pytest.raises(UserError, match=r"device: 'auto' -> 'cpu'"):
        _train(smoke(steps=3, checkpoint_every=1), out, ExecutionConfig(device="cpu", report_to=("none",)),
               resume=True)


def test_config_json_holds_the_experiment_and_an_execution_section(smoke, tmp_path):
    out = tmp_path / "run"
    execution = ExecutionConfig(threads=1, report_to=("none",))
    _train(smoke(steps=1), out, execution)
    saved = json.loads((out / "config.json").read_text())
    assert saved["execution"] == execution.to_dict() and not set(saved) & set(MIXED_IN)
    assert RunConfig.from_dict(saved) == RunConfig(smoke(steps=1), execution)


def test_an_old_config_json_with_execution_settings_mixed_in_still_loads_and_resumes(smoke, tmp_path):
    out = tmp_path / "run"
    cfg, execution = smoke(steps=1, checkpoint_every=1), ExecutionConfig(threads=1, report_to=("none",))
    _train(cfg, out, execution)
    old = RunConfig(cfg, execution).flat()
    assert set(MIXED_IN) <= set(old)
    (out / "config.json").write_text(json.dumps({k: v for k, v in old.items() if k != "tune_host_allocator"}))
    folder = RunFolder(out)
    assert folder.read_config() == cfg.to_dict()
    assert folder.read_execution() == {k: v for k, v in execution.to_dict().items() if k != "tune_host_allocator"}
    assert [r["step"] for r in _train(smoke(steps=2, checkpoint_every=1), out, ExecutionConfig(threads=2,
                                      report_to=("none",)), resume=True)] == [1, 2]
    assert "execution" in json.loads((out / "config.json").read_text())  # rewritten in the current layout


def test_checkpoints_keep_the_resume_hash_they_had_when_both_were_one_mapping(smoke):
    """The hash checkpoints carry was taken over the one mapping, less the settings a resume may change (every
    execution setting but the device): earlier checkpoints must still match it."""
    for cfg in (smoke(), smoke(lr_schedule="linear", steps=4)):
        execution = ExecutionConfig(threads=3, lean_decode_step=False, device="cpu")
        flat = without_later_defaults(RunConfig(cfg, execution).flat())
        del flat["tune_host_allocator"]  # a setting of neither then
        resumable = {"steps", "checkpoint_every"} | (set(MIXED_IN) - {"device"})
        if cfg.lr_schedule == "linear":
            resumable.discard("steps")
        assert settings_hash(cfg, execution) == resume_hash(flat, resumable)


def test_the_committed_manifests_old_configs_split_and_keep_their_ids(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    monkeypatch.chdir(ROOT)  # their prompts are named relative to the repository
    shutil.copytree(ROOT / "harness" / "data" / "prepared" / "tiny", tmp_path / "prepared" / "tiny")
    manifests = sorted((ROOT / "results" / "runs").glob("*/manifest.json"))
    checked = 0
    for path in manifests:
        manifest = json.loads(path.read_text())
        if manifest.get("preset", "tiny") != "tiny" or "threads" not in manifest["config"]:
            continue
        run = RunConfig.from_dict(manifest["config"])
        assert identity.run_id(run.train) == path.parent.name
        checked += 1
    assert checked >= 1
