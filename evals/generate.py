"""Load a policy to evaluate (a run, one of its checkpoints, or a plain model) and generate on an eval set.

Targets, resolved by `resolve_target`:
- a run folder (`config.json` + `checkpoints/`): its latest checkpoint, or `step=N`; step 0 = the base policy;
- a checkpoint folder (`.../checkpoints/step-NNNNNN`): that checkpoint of its run;
- a model spec (`smollm2-135m-instruct`, `tiny-random-llama`, a local model folder, a Hub id): the model itself
  (the SFT baseline).
LoRA checkpoints are merged into the base weights after loading: generation then costs what the SFT model costs.
Generation is batched and KV-cached (`trainers.sampling.sample`), greedy by default like the paper's inference;
prompts are sorted by length so batches carry little padding, and outputs are returned in the input order.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import pickle
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError

from evals.generation_settings import GenerationSettings
from trainers import identity
from trainers.config import TrainConfig
from trainers.execution import DecodeLevers, ExecutionConfig
from trainers.data import format_prompt
from trainers.runfolder import RunFolder, content_digest, has_state, verify
from trainers.runfolder.names import CONFIG, METRICS, STATE
from trainers.models import describe_spec_error, load_causal_lm, load_tokenizer, stop_token_ids
from trainers.decode_linear import few_row_products
from trainers.resumption import settings_hash
from trainers.sampling import sample


class TargetError(ValueError):
    """The run, checkpoint or model to evaluate does not exist or is incomplete."""


@dataclass(frozen=True, slots=True)
class Target:
    """What is evaluated: a policy spec plus, optionally, a checkpoint of a run."""

    policy: str  # base model spec
    run_dir: str | None
    checkpoint: str | None
    step: int
    template: str
    run_id: str | None  # the run's identity (trainers.identity), None for a plain model
    digest: str | None = None  # the checkpoint's content (trainers.runfolder.content_digest), None without one

    def identity(self) -> dict:
        return asdict(self)


def resolve_target(target: str, step: int | None = None, template: str = "alpaca") -> Target:
    path = Path(target).expanduser()
    as_run = RunFolder(path)
    if path.is_dir() and (owner := RunFolder.of_checkpoint(path)) is not None:
        if step is not None:
            raise TargetError(f"--step {step} cannot be combined with a checkpoint folder ({target})")
        run, chosen = owner, path
        if not has_state(chosen):
            raise TargetError(f"{chosen} is not a complete checkpoint (its {STATE} is missing)")
    elif path.is_dir() and as_run.has_config() and as_run.has_metrics():
        run = as_run
        found = run.checkpoints()
        if step == 0:
            chosen = None
        elif step is None:
            if not found:
                raise TargetError(f"run {target} has no checkpoint yet (checkpoints/ is empty); train it first "
                                  "or pass --step 0 for its base policy")
            chosen = found[-1]
        else:
            chosen = run.checkpoint_dir(step)
            if not chosen.is_dir():
                steps = run.checkpoint_steps()
                raise TargetError(f"--step {step}: run {target} has no such checkpoint; it has steps {steps or 'none'}")
    else:
        problem = describe_spec_error("target", target)
        if problem or (path.exists() and not as_run.has_config()):
            raise TargetError(f"target={target!r} is neither a run folder ({CONFIG} + {METRICS}), a checkpoint "
                              "folder (RUN/checkpoints/step-N) nor a model spec"
                              + (f": {problem}" if problem else ""))
        if step not in (None, 0):
            raise TargetError(f"--step {step} needs a run folder; {target!r} is a model")
        digest = identity.model_fingerprint(target) if path.is_dir() else None  # a local folder: by content
        return Target(policy=target, run_dir=None, checkpoint=None, step=0, template=template, run_id=None,
                      digest=digest)
    cfg = TrainConfig.from_dict(run.read_config())
    run_id, digest = identity.run_id(cfg), None
    if chosen is not None:  # every file against the manifest before anything is loaded or generated
        state = verify(chosen)
        step, digest = state["step"], content_digest(state)
        # the settings that shaped the checkpoint, not the run id: a resume may extend `steps` (a new id)
        execution = ExecutionConfig.from_dict(run.read_execution())
        if state.get("resume_hash") not in (None, settings_hash(cfg, execution)):
            raise TargetError(f"{run.config_path} (run {run_id}) is not the configuration that wrote "
                              f"{chosen / STATE} (run {state.get('run_id')}): {CONFIG} was changed after "
                              "training; restore it")
    else:
        step = 0
    return Target(policy=cfg.policy, run_dir=str(run.path), checkpoint=None if chosen is None else str(chosen),
                  step=step, template=cfg.prompt_template, run_id=run_id, digest=digest)


def load_policy(target: Target, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """(model, tokenizer) ready for generation; a LoRA checkpoint is merged into the base weights. A damaged or
    refused weight file (truncated, a pickle of code) is a TargetError naming the folder."""
    tokenizer = load_tokenizer(target.policy)
    folder = Path(target.checkpoint) / "policy" if target.checkpoint else Path(target.policy)
    try:
        if target.checkpoint is None:
            model = load_causal_lm(target.policy, dtype)
        elif (folder / "adapter_config.json").is_file():
            from peft import PeftModel

            base = load_causal_lm(target.policy, dtype)
            model = PeftModel.from_pretrained(base, str(folder)).merge_and_unload()
        else:
            model = load_causal_lm(str(folder), dtype)
    except (SafetensorError, pickle.UnpicklingError, EOFError) as e:
        raise TargetError(f"{folder}: a weight file cannot be loaded ({_first_line(e)}); it is damaged or holds "
                          "objects other than tensors") from None
    return model.to(device).eval(), tokenizer


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def generate(model, tokenizer, records: list[dict], template: str, settings: GenerationSettings,
             decoding: DecodeLevers, device: str = "cpu", progress=None) -> list[str]:
    """One output per record (decoded continuation, special tokens dropped), in the records' order; `decoding`:
    how it decodes, the same outputs whichever levers are on."""
    prompts = [format_prompt(r, template, tokenizer) for r in records]
    ids = [tokenizer(p, add_special_tokens=True)["input_ids"][-settings.max_prompt_tokens:] for p in prompts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    stop = stop_token_ids(tokenizer, model)
    pad = tokenizer.pad_token_id
    generator = torch.Generator(device).manual_seed(settings.seed)
    outputs: list[str] = [""] * len(records)
    started, done_tokens = time.time(), 0
    for start in range(0, len(order), settings.batch_size):
        chunk = order[start:start + settings.batch_size]
        width = max(len(ids[i]) for i in chunk)
        q = torch.full((len(chunk), width), pad, dtype=torch.long)
        m = torch.zeros_like(q)
        for row, i in enumerate(chunk):
            q[row, width - len(ids[i]):] = torch.tensor(ids[i])
            m[row, width - len(ids[i]):] = 1
        few_rows = few_row_products(model) if decoding.few_row_decode_products else contextlib.nullcontext()
        with few_rows:
            out = sample(model, q.to(device), m.to(device), max_new_tokens=settings.max_new_tokens,
                         temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
                         stop_ids=stop, pad_id=pad, generator=generator, keep_logits=False,
                         lean_step=decoding.lean_decode_step, packed_weights=decoding.packed_decode_weights)
        for row, i in enumerate(chunk):
            n = int(out.mask[row].sum())
            outputs[i] = tokenizer.decode(out.tokens[row, :n].tolist(), skip_special_tokens=True)
            done_tokens += n
        if progress is not None:
            progress(min(start + settings.batch_size, len(order)), len(order), done_tokens, time.time() - started)
    return outputs


def outputs_hash(outputs: list[str]) -> str:
    return hashlib.sha256(json.dumps(outputs, ensure_ascii=False).encode()).hexdigest()[:16]
