"""Run folders and checkpoints under misuse: pickled payloads, edited or damaged files, two writers, lost files."""

import json
import os
import stat

import pytest
import torch

from trainers.errors import UserError
from trainers.runfolder import RunFolder, RunLock, seal_state
from trainers.runfolder.state import file_manifest
from trainers.trainer import PPOTrainer


def train(cfg, out, resume=False, log=None):
    return PPOTrainer(cfg, out, log=log or (lambda msg: None)).train(resume=resume)


@pytest.fixture
def two_steps(smoke, tmp_path):
    """A finished 2-step run with its checkpoint at step 2; returns (config of a 3-step continuation, folder)."""
    out = tmp_path / "run"
    train(smoke(steps=2, checkpoint_every=2), out)
    return smoke(steps=3, checkpoint_every=2), out


def rewrite_manifest(folder):
    """What an attacker who edits files can also do: make the manifest (and the state's seal) agree with them."""
    state = json.loads((folder / "state.json").read_text())
    state["files"] = file_manifest(folder)
    (folder / "state.json").write_text(json.dumps(seal_state(state)))


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickled_payload_in_rng_pt_is_refused_not_run(two_steps, tmp_path):
    cfg, out = two_steps
    folder = RunFolder(out).latest_checkpoint()
    marker = tmp_path / "ran"
    torch.save({"torch": torch.get_rng_state(), "sampling": Payload(marker)}, folder / "rng.pt")
    rewrite_manifest(folder)
    with pytest.raises(UserError, match=r"rng\.pt holds objects other than tensors"):
        train(cfg, out, resume=True)
    assert not marker.exists()


def test_an_overwritten_optimizer_file_is_named(two_steps):
    cfg, out = two_steps
    folder = RunFolder(out).latest_checkpoint()
    torch.save({"state": {}, "param_groups": []}, folder / "optimizer.pt")
    with pytest.raises(UserError, match=r"optimizer\.pt does not match the sha256"):
        train(cfg, out, resume=True)


@pytest.mark.parametrize("edit, message", [
    ({"step": 1}, "says step 1 but the folder is step-000002"),
    ({"resume_hash": "000000000000"}, "written by another configuration"),
    ({"kl_coef": 5.0}, "a field was edited after the checkpoint was written"),
])
def test_an_edited_state_json_is_refused(two_steps, edit, message):
    cfg, out = two_steps
    folder = RunFolder(out).latest_checkpoint()
    state = json.loads((folder / "state.json").read_text())
    edited = {**state, **edit}
    resealed = "kl_coef" not in edit  # past the seal (as a careful attacker would), the deeper check still holds
    (folder / "state.json").write_text(json.dumps(seal_state(edited) if resealed else edited))
    with pytest.raises(UserError, match=message):
        train(cfg, out, resume=True)


def test_a_changed_config_is_refused_on_resume_even_without_config_json(two_steps, smoke):
    _, out = two_steps
    (out / "config.json").unlink()
    with pytest.raises(UserError, match="written by another configuration"):
        train(smoke(steps=3, checkpoint_every=2, lr=5e-4), out, resume=True)


def test_a_truncated_tensor_file_is_a_clear_error(two_steps):
    cfg, out = two_steps
    folder = RunFolder(out).latest_checkpoint()
    data = (folder / "value.safetensors").read_bytes()
    (folder / "value.safetensors").write_bytes(data[: len(data) // 2])
    rewrite_manifest(folder)
    with pytest.raises(UserError, match=r"value\.safetensors cannot be read as safetensors"):
        train(cfg, out, resume=True)


def test_a_second_writer_fails_with_the_folder_named(two_steps):
    cfg, out = two_steps
    with RunLock(out), pytest.raises(UserError, match=f"run folder {out} is in use by another process"):
        train(cfg, out, resume=True)
    assert [r["step"] for r in RunFolder(out).read_metrics()] == [1, 2]
    assert len(train(cfg, out, resume=True)) == 3  # the lock is gone with its holder


def test_a_fresh_start_never_overwrites_a_run_whose_config_json_is_gone(two_steps, smoke):
    _, out = two_steps
    (out / "config.json").unlink()
    before = (out / "metrics.jsonl").read_bytes()
    with pytest.raises(UserError, match="already holds a run; pass --resume"):
        train(smoke(steps=2, checkpoint_every=2), out)
    assert (out / "metrics.jsonl").read_bytes() == before and RunFolder(out).latest_checkpoint() is not None


def test_resume_without_a_checkpoint(smoke, tmp_path):
    lines = []
    train(smoke(steps=1, checkpoint_every=5), tmp_path / "empty", resume=True, log=lines.append)
    assert f"no checkpoint in {tmp_path / 'empty'}; starting fresh" in lines
    # a run whose log goes past its first checkpoint step has lost its checkpoints: refused
    lost = tmp_path / "lost"
    train(smoke(steps=3, checkpoint_every=2), lost)
    for folder in RunFolder(lost).checkpoints():
        for p in sorted(folder.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        folder.rmdir()
    with pytest.raises(UserError, match="no checkpoint.*checkpoints were removed"):
        train(smoke(steps=3, checkpoint_every=2), lost, resume=True)


def test_a_metrics_log_missing_checkpointed_steps_is_refused(two_steps):
    cfg, out = two_steps
    rows = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text(rows[1] + "\n")
    with pytest.raises(UserError, match="does not hold steps 1..2"):
        train(cfg, out, resume=True)


def test_metrics_reader_drops_only_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "x": 1\n{"step": 3}\n')
    with pytest.raises(UserError, match=r"metrics\.jsonl, line 2: not a JSON record"):
        RunFolder(tmp_path).read_metrics()
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "tr')
    assert [r["step"] for r in RunFolder(tmp_path).read_metrics()] == [1, 2]


def test_run_files_are_readable_by_the_group(two_steps):
    mask = os.umask(0o022)
    os.umask(mask)
    if mask & stat.S_IRGRP:
        pytest.skip(f"umask {mask:03o} withholds group read from every file")
    _, out = two_steps
    folder = RunFolder(out).latest_checkpoint()
    for path in (out / "config.json", out / "run.json", out / "metrics.jsonl", folder, folder / "state.json",
                 folder / "rng.pt", folder / "value.safetensors", folder / "policy" / "adapter_model.safetensors"):
        assert path.stat().st_mode & stat.S_IRGRP, path
