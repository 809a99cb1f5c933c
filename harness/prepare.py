"""`harness prepare --preset P`: AlpacaFarm in miniature - preference data and a proxy reward model.

1. sample two responses per `preference` instruction from the SFT policy (temperature 1.0, the preset's
   response length; both cached in `pairs.json`);
2. label each pair with the simulated judge in both orders: the noiseless preference is the "gold" label, and
   AlpacaFarm-style training labels flip 25% of them (seeded);
3. train the proxy reward model with TRL's RewardTrainer (Bradley-Terry loss; LoRA r=8 on q/k/v/o of the SFT
   backbone plus a trained scalar `score` head), on 85% of the instructions;
4. merge the LoRA weights, write a harness reward-model directory at `prepared:P` ($HARNESS_CACHE/prepared/P/
   reward-model), which the preset's PPO reads, and report held-out preference accuracy (against the gold and
   the noisy labels) in `prepare.json` beside it.

Idempotent: each stage's output is kept, a rerun reuses it (pairs, then the model); `--force` redoes the model.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import torch

from evals.generate import GenerationSettings, generate
from evals.judging import AnnotationCache, Pair, annotate
from evals.reward_judge import RewardModelJudge
from evals.simulated import SimulatedJudge, training_labels
from trainers import data
from trainers.config import TrainConfig
from trainers.heads import HEAD_META, ScalarHeadModel, prepared_dir, save_reward_model
from trainers import models
from trainers.models import cache_dir, load_causal_lm, load_tokenizer
from trainers.runlog import atomic_write_text

HELD_OUT = 0.15
LABEL_FLIP = 0.25


def _pairs(cfg: TrainConfig, folder: Path, log, limit: int | None) -> list[dict]:
    path = folder / "pairs.json"
    records = data.load_records(cfg.prompts, "preference")[:limit]
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("policy") == cfg.policy and len(saved["pairs"]) == len(records):
            log(f"pairs: reusing {len(saved['pairs'])} sampled pairs ({path})")
            return saved["pairs"]
    model, tok = load_causal_lm(cfg.policy, torch.float32), load_tokenizer(cfg.policy)
    outs = []
    for seed in (1, 2):
        settings = GenerationSettings(max_new_tokens=cfg.response_len, temperature=1.0, top_p=1.0, batch_size=32,
                                      seed=seed)
        log(f"pairs: sampling response {seed} of 2 for {len(records)} preference instructions")
        outs.append(generate(model, tok, records, cfg.prompt_template, settings,
                             progress=lambda d, t, n, s: log(f"  {d}/{t} prompts, {n / max(s, 1e-9):.0f} tokens/s")))
    pairs = [{"id": f"pref-{i}", "instruction": r["instruction"], "input": r["input"], "output_1": a, "output_2": b}
             for i, (r, a, b) in enumerate(zip(records, *outs))]
    atomic_write_text(path, json.dumps({"policy": cfg.policy, "pairs": pairs}, ensure_ascii=False, indent=1))
    return pairs


def _split(n: int, seed: int) -> tuple[list[int], list[int]]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    cut = max(1, int(round(HELD_OUT * n)))
    return sorted(order[cut:]), sorted(order[:cut])


def prepare(preset_name: str, cfg: TrainConfig, *, log=None, force: bool = False, limit: int | None = None,
            epochs: float = 1.0, batch_size: int = 8, lr: float = 2e-4) -> dict:
    log = log or (lambda msg: print(msg, flush=True))
    out = prepared_dir(preset_name)
    report_path = out.parent / "prepare.json"
    # a model written before reward models recorded where they read their score is retrained
    knows_its_position = (out / HEAD_META).is_file() and "score_token" in json.loads((out / HEAD_META).read_text())
    if out.is_dir() and report_path.is_file() and knows_its_position and not force:
        report = json.loads(report_path.read_text())
        log(f"prepare: reward model already at {out} (held-out accuracy {report['heldout_accuracy_gold']:.1f}%); "
            "--force retrains it")
        return report
    started = time.time()
    folder = out.parent
    folder.mkdir(parents=True, exist_ok=True)
    pairs = _pairs(cfg, folder, log, limit)
    t_pairs = time.time() - started

    judge = SimulatedJudge()
    cache = AnnotationCache(cache_dir() / "annotations.sqlite")
    objs = [Pair(p["instruction"], p["input"], p["output_1"], p["output_2"], p["id"]) for p in pairs]
    gold = annotate(judge, objs, order="both", cache=cache)
    noisy = training_labels(gold, p_flip=LABEL_FLIP, seed=cfg.seed)
    train_idx, test_idx = _split(len(pairs), cfg.seed)

    tok = load_tokenizer(cfg.policy)
    prompts = [data.format_prompt({"instruction": p["instruction"], "input": p["input"]}, cfg.prompt_template, tok)
               for p in pairs]
    rows = []
    for i in train_idx:
        good, bad = ("output_2", "output_1") if noisy[i] == 2 else ("output_1", "output_2")
        rows.append({"prompt": prompts[i], "chosen": pairs[i][good], "rejected": pairs[i][bad]})
    log(f"reward model: TRL RewardTrainer on {len(rows)} pairs ({100 * LABEL_FLIP:.0f}% label noise), "
        f"{len(test_idx)} held out")
    t0 = time.time()
    reward = _train_reward_model(cfg, tok, rows, folder / "trl", epochs=epochs, batch_size=batch_size, lr=lr,
                                 seed=cfg.seed)
    tmp = folder / "reward-model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_reward_model(reward, tok, tmp, meta={"trained_by": "trl RewardTrainer", "pairs": len(rows),
                                              "label_flip": LABEL_FLIP, "policy": cfg.policy})
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    t_train = time.time() - t0

    rm = RewardModelJudge(str(out), template=cfg.prompt_template)
    held = [objs[i] for i in test_idx]
    r1 = rm.rewards([prompts[i] for i in test_idx], [objs[i].output_1 for i in test_idx])
    r2 = rm.rewards([prompts[i] for i in test_idx], [objs[i].output_2 for i in test_idx])
    pred = [2 if b > a else 1 for a, b in zip(r1.tolist(), r2.tolist())]
    decided = [(p, g) for p, g in zip(pred, [gold[i] for i in test_idx]) if g != 1.5]
    acc_gold = 100.0 * sum(p == (2 if g > 1.5 else 1) for p, g in decided) / max(1, len(decided))
    acc_noisy = 100.0 * sum(p == noisy[i] for p, i in zip(pred, test_idx)) / max(1, len(test_idx))
    report = {
        "preset": preset_name, "reward_model": str(out), "policy": cfg.policy, "pairs": len(pairs),
        "train_pairs": len(rows), "heldout_pairs": len(held), "label_flip": LABEL_FLIP,
        "heldout_accuracy_gold": acc_gold, "heldout_accuracy_noisy": acc_noisy,
        "judge": judge.identity(), "trainer": f"trl {_version('trl')} RewardTrainer",
        "seconds": {"pairs": round(t_pairs, 1), "train": round(t_train, 1), "total": round(time.time() - started, 1)},
    }
    atomic_write_text(report_path, json.dumps(report, indent=2))
    log(f"reward model ready at {out}: held-out accuracy {acc_gold:.1f}% vs the judge's noiseless labels, "
        f"{acc_noisy:.1f}% vs the noisy labels (n={len(held)}); {report['seconds']['total']:.0f} s")
    return report


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def _train_reward_model(cfg: TrainConfig, tok, rows: list[dict], workdir: Path, *, epochs: float, batch_size: int,
                        lr: float, seed: int) -> ScalarHeadModel:
    import datasets
    from peft import LoraConfig, TaskType
    from trl import RewardConfig, RewardTrainer

    model = _sequence_classifier(cfg.policy)
    model.config.pad_token_id = tok.pad_token_id
    tok = _right_padded(tok)
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
    merged = trainer.model.merge_and_unload().eval()
    score = merged.score
    head = torch.nn.Linear(score.in_features, 1)
    with torch.no_grad():
        head.weight.copy_(score.weight.float())
        head.bias.copy_(score.bias.float() if score.bias is not None else torch.zeros(1))
    shutil.rmtree(workdir, ignore_errors=True)
    return ScalarHeadModel(merged.model, head, score_token=trl_score_token(tok)).eval()


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


def _right_padded(tok):
    import copy

    tok = copy.deepcopy(tok)
    tok.padding_side = "right"
    return tok
