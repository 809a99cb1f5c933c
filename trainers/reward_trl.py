"""A proxy reward model trained by TRL's RewardTrainer: LoRA r=8 on q/k/v/o plus a trained `score` head on the SFT
policy, backward passes (`harness prepare --method trl`).

It is saved as that adapter and head naming the SFT model, so that a run with reference='one_base' reads it as a
frozen adapter of the policy's own base (`trainers.one_base`) and a two-backbone run merges it into its reward
backbone.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from trainers import models
from trainers.config import TrainConfig
from trainers.heads import ScalarHeadModel


def trl_version() -> str:
    from importlib.metadata import version

    return version("trl")


def train_reward_model(cfg: TrainConfig, tok, rows: list[dict], workdir: Path, *, epochs: float, batch_size: int,
                        lr: float, seed: int) -> tuple[ScalarHeadModel, tuple[dict, dict[str, torch.Tensor]]]:
    """TRL's reward model: (the merged model with its head, its LoRA adapter as `save_reward_model` writes it)."""
    import datasets
    from peft import LoraConfig, TaskType
    from peft.tuners.lora import LoraLayer
    from trl import RewardConfig, RewardTrainer

    model = _sequence_classifier(cfg.policy)
    model.config.pad_token_id = tok.pad_token_id
    tok = _padded(tok, "right")
    args = RewardConfig(output_dir=str(workdir), per_device_train_batch_size=batch_size, num_train_epochs=epochs,
                        learning_rate=lr, lr_scheduler_type="linear", warmup_steps=2, max_length=cfg.query_len
                        + cfg.response_len + 8, logging_steps=5, save_strategy="no", report_to="none",
                        use_cpu=not torch.cuda.is_available(), seed=seed, disable_dropout=True,
                        activation_checkpointing=False, dataloader_num_workers=0,
                        # TRL defaults to bf16 autocast; CPUs without bf16 units run it ~500x slower than fp32
                        bf16=_bf16_is_fast(), fp16=False)
    peft = LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.0,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], modules_to_save=["score"])
    trainer = RewardTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                            processing_class=tok, peft_config=peft)
    trainer.train()
    stack = trainer.model.get_base_model().get_decoder()
    tensors = {f"{name}.lora_{x}.weight": getattr(layer, f"lora_{x}")["default"].weight.detach().float().cpu().clone()
               for name, layer in stack.named_modules() if isinstance(layer, LoraLayer) for x in "AB"}
    settings = {"r": peft.r, "lora_alpha": peft.lora_alpha, "target_modules": sorted(peft.target_modules)}
    merged = trainer.model.merge_and_unload().eval()
    score = merged.score
    head = torch.nn.Linear(score.in_features, 1)
    with torch.no_grad():
        head.weight.copy_(score.weight.float())
        head.bias.copy_(score.bias.float() if score.bias is not None else torch.zeros(1))
    shutil.rmtree(workdir, ignore_errors=True)
    return ScalarHeadModel(merged.model, head, score_token=trl_score_token(tok)).eval(), (settings, tensors)


def trl_score_token(tok) -> str:
    """Where TRL's RewardTrainer taught the classifier to read: it appends EOS to every response, and the
    classifier reads the last token that is not padding, which is the token before EOS when the pad token is EOS."""
    return "last_token" if tok.pad_token_id == tok.eos_token_id else "eos"


def _sequence_classifier(spec: str):
    """The SFT policy's backbone under a one-output `score` head (what TRL's RewardTrainer trains)."""
    from transformers import AutoModelForSequenceClassification

    if spec == models.TINY:  # built in-process: copy its weights into the classifier
        lm = models.tiny_random_llama()
        lm.config.num_labels = 1
        clf = AutoModelForSequenceClassification.from_config(lm.config)
        clf.model.load_state_dict(lm.model.state_dict())
        return clf.float()
    return AutoModelForSequenceClassification.from_pretrained(models.resolve_path(spec), num_labels=1,
                                                              dtype=torch.float32)


def _bf16_is_fast() -> bool:
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    from trainers.precision import resolve_frozen_dtype

    return resolve_frozen_dtype("auto", torch.device("cpu")) == torch.bfloat16


def _padded(tok, side: str):
    import copy

    tok = copy.deepcopy(tok)
    tok.padding_side = side
    return tok
