"""Rebuild AlpacaFarm models published as weight diffs against LLaMA-7B (`harness models recover`).

Semantics follow tatsu-lab/alpaca_farm `pretrained_models/recover_model_weights.py` (itself the recipe of
tatsu-lab/stanford_alpaca `weight_diff.py`), re-implemented on plain state dicts:

* The diff was made against the raw LLaMA *after* it got a `[PAD]` token: `stable_resize_token_embeddings`
  (alpaca_farm `src/alpaca_farm/utils.py`; `smart_tokenizer_and_embedding_resize` in stanford_alpaca
  `train.py`) appends rows to `embed_tokens` and `lm_head`, each set to the mean of that matrix's old rows.
  We resize the raw weights the same way, inferring the number of new rows from the diff's vocabulary.
* recovered = diff + resized raw, tensor by tensor, in float32 (upstream loads both with float32).
* Reward models (`RewardModel` of `src/alpaca_farm/models/reward_model.py`: config `model_type`
  "reward_model", a full `LlamaForCausalLM` under `backbone_model.`, and an `nn.Linear(hidden, 1)` as
  `reward_head`) are diffed against the same raw LLaMA-7B, raw key `k` matching `backbone_model.k`
  (the backbone's `lm_head` included when the diff has it). `reward_head.*` is stored as is.
* Integrity: the sum of every recovered tensor must match `model_sum.txt` shipped in each
  `tatsu-lab/alpaca-farm-*-wdiff` repository (`np.isclose`, i.e. rtol 1e-5).
* The output takes the diff's config and tokenizer files (the tokenizer with `[PAD]` added).

The output always has exactly the diff's tensor names; raw tensors the diff does not mention are dropped.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file

from trainers.io import make_readable, replace_folder
from trainers.specs import MODEL_CONFIG

StateDict = dict[str, torch.Tensor]
Kind = Literal["auto", "causal_lm", "reward_model"]

EMBED_KEY = "model.embed_tokens.weight"
LM_HEAD_KEY = "lm_head.weight"
REWARD_PREFIX = "backbone_model."
REWARD_HEAD_PREFIX = "reward_head."
ROTARY_SUFFIX = "rotary_emb.inv_freq"
SUM_FILE = "model_sum.txt"
SIDE_FILES = ("generation_config.json", "tokenizer.model", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "added_tokens.json")
WEIGHT_LAYOUTS = (("model.safetensors.index.json", "model.safetensors"),
                  ("pytorch_model.bin.index.json", "pytorch_model.bin"))
MAX_SHARD_BYTES = 5 * 1024**3

# Expected sums of all recovered weights, by diff name. The AlpacaFarm diffs carry theirs in `model_sum.txt`
# (not in any source file), which `recover` reads from the diff directory. Provenance of entries here:
# - alpaca-7b: hard-coded in tatsu-lab/stanford_alpaca weight_diff.py `recover` (checked there with atol 1e-2).
KNOWN_SUMS: dict[str, float] = {"tatsu-lab/alpaca-7b-wdiff": 50637.1836}


def resize_embeddings_for_new_tokens(state_dict: Mapping[str, torch.Tensor], num_new_tokens: int,
                                     keys: tuple[str, ...] = (EMBED_KEY, LM_HEAD_KEY)) -> StateDict:
    """A copy of `state_dict` whose `keys` (those present) gain `num_new_tokens` rows equal to the old rows' mean."""
    if num_new_tokens < 0:
        raise ValueError(f"num_new_tokens is {num_new_tokens}; expected >= 0 (the diff cannot have fewer tokens than the raw model)")
    out = dict(state_dict)
    for key in keys:
        if num_new_tokens and key in out:
            old = out[key]
            mean = old.float().mean(dim=0, keepdim=True).to(old.dtype)
            out[key] = torch.cat([old, mean.expand(num_new_tokens, -1)], dim=0)
    return out


def causal_lm_key(raw_key: str) -> str:
    return raw_key


def reward_model_key(raw_key: str) -> str:
    return REWARD_PREFIX + raw_key


def apply_weight_diff(raw_state: Mapping[str, torch.Tensor], diff_state: Mapping[str, torch.Tensor], *,
                      key_map: Callable[[str], str] = causal_lm_key, passthrough: tuple[str, ...] = ()) -> StateDict:
    """diff + raw for every diff tensor (float32); raw key `k` is the diff's `key_map(k)`.

    Diff tensors whose names start with one of `passthrough` are not deltas (the reward head) and are kept as is.
    """
    raw_for = {key_map(k): k for k in raw_state}
    out: StateDict = {}
    for key, delta in diff_state.items():
        if passthrough and key.startswith(passthrough):
            out[key] = delta.to(torch.float32)
            continue
        raw_key = raw_for.get(key)
        if raw_key is None:
            raise ValueError(f"diff tensor {key!r} has no counterpart in the raw weights ({len(raw_state)} tensors, mapped "
                             f"with {key_map.__name__}); expected the raw model the diff was made against (LLaMA-7B)")
        raw = raw_state[raw_key]
        if raw.shape != delta.shape:
            raise ValueError(f"shape mismatch for {key!r}: diff has {tuple(delta.shape)}, raw {raw_key!r} has "
                             f"{tuple(raw.shape)}; expected equal shapes")
        out[key] = delta.to(torch.float32) + raw.to(torch.float32)
    return out


def weights_sum(state_dict: Mapping[str, torch.Tensor]) -> float:
    # float64: upstream sums in float32, so our own rounding must stay far below the check's tolerance
    return float(sum(t.sum(dtype=torch.float64).item() for t in state_dict.values()))


def check_integrity(state_dict: Mapping[str, torch.Tensor], expected_sum: float, *,
                    rtol: float = 1e-5, atol: float = 1e-2) -> float:
    """The weights' sum; ValueError when it is not within atol + rtol*|expected| of `expected_sum`."""
    actual = weights_sum(state_dict)
    if abs(actual - expected_sum) > atol + rtol * abs(expected_sum):
        raise ValueError(f"integrity check failed: the recovered weights sum to {actual:.6f}, expected {expected_sum:.6f} "
                         f"(tolerance {atol} + {rtol}*|expected|); is the raw model the original LLaMA-7B converted "
                         "to Hugging Face format with transformers>=4.29.2?")
    return actual


def detect_kind(config: Mapping, diff_keys: list[str]) -> Literal["causal_lm", "reward_model"]:
    if config.get("model_type") == "reward_model" or "RewardModel" in (config.get("architectures") or []):
        return "reward_model"
    if diff_keys and all(k.startswith((REWARD_PREFIX, REWARD_HEAD_PREFIX)) for k in diff_keys):
        return "reward_model"
    return "causal_lm"


def load_state_dict(directory: str | Path) -> StateDict:
    """Tensors of a Hugging Face checkpoint folder: (sharded) safetensors, else (sharded) pytorch_model*.bin."""
    directory = _existing_dir(directory, "checkpoint directory")
    for index_name, single_name in WEIGHT_LAYOUTS:
        if (directory / index_name).is_file():
            shards = sorted(set(_read_json(directory / index_name)["weight_map"].values()))
            files = [directory / name for name in shards]
            for path in files:
                if not path.is_file():
                    raise ValueError(f"shard {path.name} listed in {directory / index_name} is missing; expected all shards")
        elif (directory / single_name).is_file():
            files = [directory / single_name]
        else:
            continue
        state: StateDict = {}
        for path in files:
            state.update(_load_file(path))
        return state
    raise ValueError(f"no weight files in {directory}; expected model.safetensors, pytorch_model.bin or a sharded "
                     "model.safetensors.index.json / pytorch_model.bin.index.json")


def save_state_dict(state_dict: Mapping[str, torch.Tensor], directory: Path, max_shard_bytes: int = MAX_SHARD_BYTES) -> None:
    """safetensors in the layout `from_pretrained` reads: one file, or shards plus an index."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state_dict.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor.contiguous()
        size += nbytes
    many = len(shards) > 1
    names = [f"model-{i:05d}-of-{len(shards):05d}.safetensors" if many else "model.safetensors" for i in range(1, len(shards) + 1)]
    for name, shard in zip(names, shards):
        save_file(shard, str(directory / name), metadata={"format": "pt"})
    if many:
        weight_map = {key: name for name, shard in zip(names, shards) for key in shard}
        total = sum(t.numel() * t.element_size() for t in state_dict.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def recover(raw_dir: str | Path, diff_dir: str | Path, out_dir: str | Path, *, kind: Kind = "auto",
            expected_sum: float | None = None, dtype: torch.dtype = torch.float32, overwrite: bool = False) -> Path:
    """Write diff + raw LLaMA to `out_dir` (safetensors, the diff's config and tokenizer) and return it.

    `expected_sum` defaults to the diff directory's `model_sum.txt` when there is one (no check otherwise).
    Nothing is written unless every check passes: the model goes to a temporary folder beside `out_dir`,
    renamed into place at the end.
    """
    raw_dir, diff_dir = _existing_dir(raw_dir, "raw_dir"), _existing_dir(diff_dir, "diff_dir")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ValueError(f"out_dir {out_dir} exists and is not empty; expected a new path (or pass overwrite=True)")
    if kind not in ("auto", "causal_lm", "reward_model"):
        raise ValueError(f"kind is {kind!r}; expected 'auto', 'causal_lm' or 'reward_model'")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype is {dtype}; expected a floating-point dtype")
    if not (diff_dir / MODEL_CONFIG).is_file():
        raise ValueError(f"{diff_dir} has no {MODEL_CONFIG}; expected the complete weight-diff folder")
    config = _read_json(diff_dir / MODEL_CONFIG)
    raw_config = _read_json(raw_dir / MODEL_CONFIG) if (raw_dir / MODEL_CONFIG).is_file() else config

    diff = load_state_dict(diff_dir)
    raw = load_state_dict(raw_dir)
    if kind == "auto":
        kind = detect_kind(config, list(diff))
    is_reward = kind == "reward_model"
    prefix = REWARD_PREFIX if is_reward else ""
    key_map = reward_model_key if is_reward else causal_lm_key

    raw = _add_rotary_buffers(raw, diff, prefix, raw_config)
    if prefix + EMBED_KEY in diff and EMBED_KEY in raw:
        raw = resize_embeddings_for_new_tokens(raw, diff[prefix + EMBED_KEY].shape[0] - raw[EMBED_KEY].shape[0])
    recovered = apply_weight_diff(raw, diff, key_map=key_map, passthrough=(REWARD_HEAD_PREFIX,) if is_reward else ())
    del raw, diff

    if expected_sum is None and (diff_dir / SUM_FILE).is_file():
        expected_sum = float((diff_dir / SUM_FILE).read_text().strip())
    if expected_sum is not None:
        check_integrity(recovered, expected_sum)

    recovered = {k: v.to(dtype) for k, v in recovered.items()}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    make_readable(tmp)  # the recovered model is shared like any model folder, not 0700
    try:
        save_state_dict(recovered, tmp)
        _write_side_files(diff_dir, tmp, config, dtype)
        replace_folder(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _add_rotary_buffers(raw: StateDict, diff: Mapping[str, torch.Tensor], prefix: str, config: Mapping) -> StateDict:
    # Diffs saved with transformers < 4.31 hold the (persistent then) rotary inv_freq buffers, and model_sum.txt
    # counts them; raw models converted with newer versions lack them, so rebuild them from the config.
    missing = [k[len(prefix):] for k in diff if k.endswith(ROTARY_SUFFIX) and k[len(prefix):] not in raw]
    if not missing:
        return raw
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    base = config.get("rope_theta") or (config.get("rope_parameters") or {}).get("rope_theta") or 10000.0
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    return {**raw, **{k: inv_freq.clone() for k in missing}}


def _write_side_files(diff_dir: Path, out: Path, config: dict, dtype: torch.dtype) -> None:
    config = dict(config)
    for key in ("torch_dtype", "dtype"):  # say what the weights now are, so loaders pick it by default
        if key in config:
            config[key] = str(dtype).removeprefix("torch.")
    (out / MODEL_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    for name in SIDE_FILES:
        if (diff_dir / name).is_file():
            shutil.copy2(diff_dir / name, out / name)


def _load_file(path: Path) -> StateDict:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:  # mmap keeps a 7B raw model out of anonymous memory; pre-zipfile checkpoints cannot be mapped
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        return torch.load(path, map_location="cpu", weights_only=True)


def _existing_dir(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{what} {path} does not exist or is not a directory; expected a Hugging Face checkpoint folder")
    return path


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); expected a Hugging Face JSON file") from err
