"""Scalar-head models: a transformer backbone plus a linear head giving one number per position.

Reward models read the head at one position, which is a property of how the model was trained
(`score_token`, stored in `scalar_head.json`):
- "eos": at the EOS token that follows the response (trained on sequences ending with EOS, which the
  classifier read there);
- "last_token": at the response's last token, EOS excluded (AlpacaFarm's reward models, trained without EOS
  and fed decoded text with special tokens skipped; TRL's RewardTrainer when its pad token is the EOS token,
  because the classifier then reads the last non-pad token, the one before EOS);
- "response_mean": the head's mean over the response's tokens and the EOS after it, i.e. the head applied to the
  mean of their hidden states (`harness prepare`'s proxy: a head fitted on these pooled states agrees with the
  simulated judge more often than one fitted on the EOS state; docs/evaluation.md has the figures).
Value models read the head at every position that predicts a response token. A reward-model directory
(harness format) is a Hugging Face backbone directory plus `scalar_head.safetensors` and `scalar_head.json`, or,
for a head on an unchanged model, the two head files alone with `scalar_head.json` naming that model ("backbone":
a model spec): kilobytes instead of the backbone's weights. A head-only directory may also carry a LoRA adapter of
that model (`reward_adapter.safetensors`, tensors named from the decoder stack, e.g. `layers.0.self_attn.q_proj.lora_A
.weight`, and its rank, alpha and modules under "adapter" in `scalar_head.json`): the reward model is then the named
model with that adapter, merged into its weights when loaded alone (`load_reward_model`), or run as a frozen named
adapter of a base it shares with the policy (`trainers.one_base`).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import AutoModel

from trainers import models
from trainers.io import make_tree_readable, read_json_object
from trainers.specs import MODEL_CONFIG, PREPARED, prepared_dir, resolve_reward_spec  # noqa: F401  (re-exported)

HEAD_WEIGHTS = "scalar_head.safetensors"
HEAD_META = "scalar_head.json"
ADAPTER_WEIGHTS = "reward_adapter.safetensors"
SCORE_TOKENS = ("eos", "last_token", "response_mean")


def is_reward_model_dir(path: str | Path) -> bool:
    return (Path(path) / HEAD_WEIGHTS).is_file()


def load_backbone(spec: str, dtype: torch.dtype) -> nn.Module:
    """The decoder stack of a causal-LM spec, without its LM head."""
    if spec == models.TINY:
        return models.tiny_random_llama().model.to(dtype)
    if models.is_random_llama(spec):
        return models.random_llama(spec, dtype).model
    return AutoModel.from_pretrained(models.resolve_path(spec), dtype=dtype)


def hidden_size(backbone: nn.Module) -> int:
    cfg = backbone.config
    return getattr(cfg, "hidden_size", None) or cfg.get_text_config().hidden_size


def new_head(size: int, *, zero: bool, seed: int) -> nn.Linear:
    """A float32 linear head: zero-initialised (value heads) or seeded normal(0, 1/sqrt(size)) (untrained rewards)."""
    head = nn.Linear(size, 1)
    with torch.no_grad():
        if zero:
            head.weight.zero_()
        else:
            gen = torch.Generator().manual_seed(seed)
            head.weight.copy_(torch.randn(1, size, generator=gen) / size**0.5)
        head.bias.zero_()
    return head


def check_score_token(score_token: str) -> str:
    if score_token not in SCORE_TOKENS:
        raise ValueError(f"score_token={score_token!r} is not known; valid: {', '.join(SCORE_TOKENS)}")
    return score_token


class ScalarHeadModel(nn.Module):
    """backbone -> last hidden states -> head.

    With `adapters_off`, the backbone runs with its LoRA adapters disabled: a frozen reward model that
    shares its weights with a LoRA value model. Subclasses that read another model's states override
    `hidden_states` (`trainers.one_base.HeadOnBase`).
    """

    def __init__(self, backbone: nn.Module, head: nn.Linear, adapters_off: bool = False,
                 score_token: str = "eos") -> None:
        super().__init__()
        check_score_token(score_token)
        self.backbone = backbone
        self.head = head
        self.adapters_off = adapters_off
        self.score_token = score_token

    @property
    def reads_eos(self) -> bool:
        """Whether the model reads text followed by EOS (appended to a response cut at the length limit)."""
        return self.score_token in ("eos", "response_mean")

    def _context(self):
        return self.backbone.disable_adapter() if self.adapters_off else contextlib.nullcontext()

    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor) -> Tensor:
        with self._context():
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                use_cache=False)
        return out.last_hidden_state

    def values(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, start: int, length: int) -> Tensor:
        """Head outputs at positions [start, start + length) as float32 [B, length]."""
        h = self.hidden_states(input_ids, attention_mask, position_ids)[:, start:start + length]
        return self.head(h.to(self.head.weight.dtype)).squeeze(-1)

    def read_states(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, index: Tensor,
                    first: Tensor | None = None) -> Tensor:
        """The hidden state the head reads per row [B, d]: at position `index[b]` (the EOS, or the response's last
        token), or, for "response_mean", the mean over positions first[b] .. index[b] (the response and its EOS)."""
        return self.pick_states(self.hidden_states(input_ids, attention_mask, position_ids), index, first)

    def pick_states(self, h: Tensor, index: Tensor, first: Tensor | None = None) -> Tensor:
        """`read_states` from hidden states already computed ([B, T, d] -> [B, d])."""
        if self.score_token != "response_mean":
            return h[torch.arange(h.size(0), device=h.device), index]
        if first is None:
            raise ValueError("a reward model reading the response's mean needs where each response starts (first)")
        cols = torch.arange(h.size(1), device=h.device)
        span = ((cols >= first.unsqueeze(1)) & (cols <= index.unsqueeze(1))).to(h.dtype)
        return (h * span.unsqueeze(-1)).sum(1) / span.sum(1, keepdim=True).clamp_min(1)

    def score_at(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, index: Tensor,
                 first: Tensor | None = None) -> Tensor:
        """Head output on `read_states` (see there), float32 [B]."""
        picked = self.read_states(input_ids, attention_mask, position_ids, index, first)
        return self.head(picked.to(self.head.weight.dtype)).squeeze(-1)

    def score_states(self, h: Tensor, index: Tensor, first: Tensor | None = None) -> Tensor:
        """`score_at` from hidden states already computed."""
        return self.head(self.pick_states(h, index, first).to(self.head.weight.dtype)).squeeze(-1)


def response_start(tokenizer, prompts: list[str], attention_mask: Tensor) -> Tensor:
    """Column where each left-padded row's response begins: the row's width less its tokens after the prompt
    (the prompt tokenised alone)."""
    n_prompt = torch.tensor([len(tokenizer(p, add_special_tokens=True)["input_ids"]) for p in prompts],
                            device=attention_mask.device)
    width, n_total = attention_mask.size(1), attention_mask.sum(1)
    return (width - n_total + n_prompt).clamp(max=width - 1)


def load_reward_model(spec: str, dtype: torch.dtype, seed: int) -> ScalarHeadModel:
    """A reward model from a harness reward-model directory, `prepared:NAME`, or `head:MODEL` (seeded untrained head);
    a directory's LoRA adapter, if any, merged into the backbone's weights."""
    resolved = resolve_reward_spec(spec)
    if not resolved.startswith("head:") and not is_reward_model_dir(Path(resolved).expanduser()):
        raise ValueError(f"reward={resolved!r} is not a reward-model directory: {HEAD_WEIGHTS} is missing")
    backbone = load_backbone(reward_backbone_spec(spec), dtype)
    head, score_token = load_reward_head(spec, hidden_size(backbone), seed)
    adapter = reward_adapter(spec)
    if adapter is not None:
        merge_adapter(backbone, *adapter)
    return ScalarHeadModel(backbone, head, score_token=score_token).eval()


def load_reward_head(spec: str, size: int, seed: int) -> tuple[nn.Linear, str]:
    """The reward model's float32 head for hidden states of `size`, and where it reads (`score_token`): a
    directory's trained head, or for `head:MODEL` a seeded untrained one reading at EOS."""
    spec = resolve_reward_spec(spec)
    if spec.startswith("head:"):
        return new_head(size, zero=False, seed=seed), "eos"
    path = Path(spec).expanduser()
    if not is_reward_model_dir(path):
        raise ValueError(f"reward={spec!r} is not a reward-model directory: {HEAD_WEIGHTS} is missing")
    head = nn.Linear(size, 1)
    head.load_state_dict(load_file(path / HEAD_WEIGHTS))
    return head, reward_score_token(path)


def reward_adapter(spec: str) -> tuple[dict, dict[str, Tensor]] | None:
    """(settings: r, lora_alpha, target_modules; tensors by decoder-stack name) of the LoRA adapter a reward-model
    directory carries, or None."""
    path = Path(resolve_reward_spec(spec)).expanduser()
    if spec.startswith("head:") or not (path / ADAPTER_WEIGHTS).is_file():
        return None
    settings = _head_meta(path).get("adapter")
    if not isinstance(settings, dict) or not {"r", "lora_alpha"} <= set(settings):
        raise ValueError(f"{path / HEAD_META} must describe the adapter in {ADAPTER_WEIGHTS} under 'adapter' "
                         "(r, lora_alpha, target_modules)")
    return settings, load_file(path / ADAPTER_WEIGHTS)


def adapter_pairs(tensors: dict[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
    """{module name: (A [r, in], B [out, r])} of an adapter's tensors."""
    names = sorted({k.rsplit(".lora_", 1)[0] for k in tensors})
    try:
        return {n: (tensors[f"{n}.lora_A.weight"], tensors[f"{n}.lora_B.weight"]) for n in names}
    except KeyError as e:
        raise ValueError(f"reward adapter: tensor {e} is missing (each module needs lora_A.weight and lora_B.weight)") \
            from None


def merge_adapter(backbone: nn.Module, settings: dict, tensors: dict[str, Tensor]) -> None:
    """W <- W + (lora_alpha / r) * B @ A for every adapted linear layer of `backbone` (a decoder stack), in float32
    and rounded once to W's dtype."""
    scale = settings["lora_alpha"] / settings["r"]
    with torch.no_grad():
        for name, (a, b) in adapter_pairs(tensors).items():
            weight = backbone.get_submodule(name).weight
            weight.copy_((weight.float() + scale * (b.float() @ a.float())).to(weight.dtype))


def _head_meta(path: str | Path) -> dict:
    meta_path = Path(path) / HEAD_META
    return read_json_object(meta_path) if meta_path.is_file() else {}


def reward_score_token(path: str | Path) -> str:
    """Where the reward model in `path` reads its score; directories written before the field existed read at EOS."""
    token = _head_meta(path).get("score_token", "eos")
    if token not in SCORE_TOKENS:
        raise ValueError(f"{Path(path) / HEAD_META}: score_token={token!r} is not known; valid: {', '.join(SCORE_TOKENS)}")
    return token


def save_reward_model(model: ScalarHeadModel, tokenizer, out_dir: str | Path, meta: dict | None = None,
                      backbone_spec: str | None = None,
                      adapter: tuple[dict, dict[str, Tensor]] | None = None) -> Path:
    """Write a harness reward-model directory: backbone, tokenizer and head, or, with `backbone_spec` (the model
    the head sits on), the head alone naming that model, and with `adapter` ((r, lora_alpha, target_modules),
    tensors by decoder-stack name) the LoRA adapter of that model the head reads through."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if backbone_spec is None:
        if adapter is not None:
            raise ValueError("a reward model's adapter is saved with the model it adapts named (backbone_spec)")
        model.backbone.save_pretrained(out)
        tokenizer.save_pretrained(out)
    save_file({k: v.detach().float().contiguous() for k, v in model.head.state_dict().items()}, out / HEAD_WEIGHTS)
    if adapter is not None:
        save_file({k: v.detach().float().contiguous() for k, v in adapter[1].items()}, out / ADAPTER_WEIGHTS)
    (out / HEAD_META).write_text(json.dumps({"format": "harness-reward-model", "version": 1,
                                              "score_token": model.score_token,
                                              **({"backbone": backbone_spec} if backbone_spec else {}),
                                              **({"adapter": adapter[0]} if adapter is not None else {}),
                                              **(meta or {})}, indent=2))
    make_tree_readable(out)  # safetensors writes 0600; a model folder is shared like any other
    return out


def from_alpacafarm_layout(recovered_dir: str | Path, backbone_config_dir: str | Path, out_dir: str | Path) -> Path:
    """Rewrite a recovered AlpacaFarm `RewardModel` directory in the harness reward-model layout.

    AlpacaFarm stores `backbone_model.<LlamaForCausalLM key>` tensors and `reward_head.{weight,bias}` under
    a `RewardConfig` that only names its backbone; the architecture comes from `backbone_config_dir`
    (the raw LLaMA-7B or the SFT model), its vocabulary taken from the recovered embeddings.
    """
    from trainers import recover  # state-dict I/O shared with weight-diff recovery

    src, out = Path(recovered_dir), Path(out_dir)
    state = recover.load_state_dict(src)
    prefix = recover.REWARD_PREFIX
    backbone = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    head = {k.removeprefix(recover.REWARD_HEAD_PREFIX): v for k, v in state.items()
            if k.startswith(recover.REWARD_HEAD_PREFIX)}
    if set(head) != {"weight", "bias"} or not backbone:
        raise ValueError(f"{src} is not an AlpacaFarm reward model: expected {prefix}* and reward_head.weight/bias tensors")
    config_path = Path(backbone_config_dir) / MODEL_CONFIG
    if not config_path.is_file():
        raise ValueError(f"backbone config {config_path} is missing; expected the raw LLaMA-7B or SFT model directory")
    config = json.loads(config_path.read_text())
    embed = backbone.get("model.embed_tokens.weight")
    if embed is not None:
        config["vocab_size"] = embed.shape[0]
    config["architectures"] = ["LlamaForCausalLM"]
    out.mkdir(parents=True, exist_ok=True)
    recover.save_state_dict(backbone, out)
    (out / MODEL_CONFIG).write_text(json.dumps(config, indent=2))
    for name in recover.SIDE_FILES:
        if (src / name).is_file():
            (out / name).write_bytes((src / name).read_bytes())
    save_file({k: v.float().contiguous() for k, v in head.items()}, out / HEAD_WEIGHTS)
    reward_config = json.loads((src / MODEL_CONFIG).read_text()) if (src / MODEL_CONFIG).is_file() else {}
    # AlpacaFarm trains its reward models without EOS (`end_sequence_with_eos=False`) and scores decoded text
    (out / HEAD_META).write_text(json.dumps({"format": "harness-reward-model", "version": 1,
                                              "score_token": "last_token", "source": "alpaca_farm RewardModel",
                                              "reward_config": reward_config}, indent=2))
    make_tree_readable(out)
    return out


def reward_backbone_spec(spec: str) -> str:
    """The model spec whose tokenizer and backbone a reward spec uses: a head-only directory's named model, or the
    directory itself."""
    resolved = resolve_reward_spec(spec)
    if resolved.startswith("head:"):
        return resolved.removeprefix("head:")
    path = Path(resolved).expanduser()
    return (_head_meta(path).get("backbone") if path.is_dir() else None) or resolved
