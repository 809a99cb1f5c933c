"""`harness prepare --preset P`: AlpacaFarm in miniature - preference data and a proxy reward model.

1. sample K responses (`samples`) per `preference` instruction from the SFT policy (temperature 1, the preset's
   response length), cached in `samples.json`;
2. every pair of an instruction's responses, K(K-1)/2 of them, labelled by the simulated judge in both orders:
   its noiseless preference is the "gold" label, and AlpacaFarm-style training labels flip 25% of them (seeded);
3. split by instruction: 85% for training, 15% held out (no pair of a held-out instruction is seen in training);
4. fit the proxy reward model on the training pairs' noisy labels:
   - `head` (the default): the SFT backbone frozen, a linear head fitted by Bradley-Terry maximum likelihood
     (`trainers.reward_fit`) on the last hidden states it reads (`read`): their mean over the response and its
     EOS (`response_mean`, the default: the better measured agreement) or the EOS state alone (`eos`); forward
     passes only, and the reward model is the policy's own base weights plus a head;
   - `trl`: TRL's RewardTrainer (LoRA r=8 on q/k/v/o plus a trained `score` head), backward passes; saved as that
     adapter and head naming the SFT model, so that a run with reference='one_base' reads it as a frozen adapter
     of the policy's own base (`trainers.one_base`) and a two-backbone run merges it into its reward backbone;
5. write the harness reward-model directory at `prepared:P` ($HARNESS_CACHE/prepared/P/reward-model), and its
   held-out agreement with the judge's noiseless preferences ("gold") and with the noisy labels, in `prepare.json`
   beside it and as a `proxy_rm` record (metric `gold_agreement`, with the number of training pairs) in the
   results store.

Idempotent: the samples are kept and reused; a model prepared with other settings (method, samples, l2, read) is
refitted, and `--force` refits it anyway. Where nothing is prepared yet and the package ships a proxy for the
preset prepared with the requested settings (`harness/data/prepared/`, the head alone), it is installed instead.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import shutil
import statistics
import time
from pathlib import Path

import torch

from evals.generate import GenerationSettings, generate
from evals.judging import AnnotationCache, Pair, annotate
from evals.reward_judge import RewardModelJudge, read_states
from evals.simulated import SimulatedJudge, training_labels
from harness.results import ResultsStore, make_record
from trainers import data, identity
from trainers.config import TrainConfig
from trainers.heads import (HEAD_META, SCORE_TOKENS, ScalarHeadModel, hidden_size, is_reward_model_dir,
                            load_backbone, new_head, prepared_dir, save_reward_model)
from trainers import models
from trainers.models import cache_dir, load_causal_lm, load_tokenizer
from trainers.reward_fit import cross_validated_agreement, fit_bradley_terry_head, pair_accuracy
from trainers.io import atomic_write_text, read_json_object, replace_folder

HELD_OUT = 0.15
PACKAGED = Path(__file__).parent / "data" / "prepared"  # proxy reward models shipped with the package, by preset
LABEL_FLIP = 0.25
METHODS = ("head", "trl")
HEAD_READS = tuple(t for t in SCORE_TOKENS if t != "last_token")  # what a fitted head may read (all end with EOS)


def _samples(cfg: TrainConfig, folder: Path, log, limit: int | None, k: int) -> list[dict]:
    """[{id, instruction, input, outputs: [K strings]}] for the preference instructions. Each response comes from
    one seeded sampling pass over all instructions (seed 1..K); passes are cached, so a larger K samples only the
    passes it lacks."""
    path = folder / "samples.json"
    records = data.load_records(cfg.prompts, "preference")[:limit]
    key = {"policy": cfg.policy, "response_len": cfg.response_len, "template": cfg.prompt_template,
           "instructions": [[r["instruction"], r["input"]] for r in records]}
    try:
        saved = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (UnicodeDecodeError, ValueError):
        saved = {}  # a damaged cache of samples: sampled again
    passes = saved.get("passes", {}) if isinstance(saved, dict) and saved.get("key") == key else {}
    missing = [seed for seed in range(1, k + 1) if str(seed) not in passes]
    log(f"samples: {k - len(missing)} of {k} responses to each of {len(records)} preference instructions cached "
        f"({path})")
    if missing:
        model, tok = load_causal_lm(cfg.policy, torch.float32), load_tokenizer(cfg.policy)
        for seed in missing:
            settings = GenerationSettings(max_new_tokens=cfg.response_len, temperature=1.0, top_p=1.0,
                                          batch_size=32, seed=seed)
            log(f"samples: response {seed} of {k} for {len(records)} preference instructions")
            passes[str(seed)] = generate(model, tok, records, cfg.prompt_template, settings,
                                         progress=lambda d, t, n, s: log(f"  {d}/{t} prompts, "
                                                                         f"{n / max(s, 1e-9):.0f} tokens/s"))
            atomic_write_text(path, json.dumps({"key": key, "passes": passes}, ensure_ascii=False))
    return [{"id": f"pref-{i}", "instruction": r["instruction"], "input": r["input"],
             "outputs": [passes[str(seed)][i] for seed in range(1, k + 1)]} for i, r in enumerate(records)]


def all_pairs(samples: list[dict]) -> list[Pair]:
    """Every pair of each instruction's responses, identical outputs left out (nothing to prefer)."""
    pairs = []
    for s in samples:
        for a, b in itertools.combinations(range(len(s["outputs"])), 2):
            if s["outputs"][a] != s["outputs"][b]:
                pairs.append(Pair(s["instruction"], s["input"], s["outputs"][a], s["outputs"][b], f"{s['id']}:{a}-{b}"))
    return pairs


def split_instructions(ids: list[str], seed: int) -> tuple[set[str], set[str]]:
    """(training, held-out) instruction ids: a seeded HELD_OUT share of the instructions is held out."""
    order = sorted(set(ids))
    random.Random(seed).shuffle(order)
    cut = max(1, int(round(HELD_OUT * len(order))))
    return set(order[cut:]), set(order[:cut])


def prepare(preset_name: str, cfg: TrainConfig, *, log=None, force: bool = False, limit: int | None = None,
            samples: int = 8, method: str = "head", l2: float = 1.0, read: str = "response_mean",
            epochs: float = 1.0, batch_size: int = 8, lr: float = 2e-4,
            results: str | Path | None = "results") -> dict:
    log = log or (lambda msg: print(msg, flush=True))
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not known; valid: {', '.join(METHODS)}")
    if samples < 2:
        raise ValueError(f"samples={samples} must be >= 2 (pairs are formed among an instruction's responses)")
    if read not in HEAD_READS:
        raise ValueError(f"read={read!r} is not known; valid: {', '.join(HEAD_READS)}")
    if not l2 >= 0 or l2 == float("inf"):
        raise ValueError(f"l2={l2} must be a finite number >= 0 (the head's L2 penalty)")
    out = prepared_dir(preset_name)
    report_path = out.parent / "prepare.json"
    wanted = {"method": method, "samples_per_instruction": samples,
              **({"l2": l2, "read": read} if method == "head" else {"epochs": epochs, "lr": lr})}
    if not out.is_dir() and not force and limit is None:
        packaged = _install_packaged(preset_name, cfg.policy, wanted, log)
        if packaged is not None:
            return packaged
    # a model written before reward models recorded where they read their score is refitted
    knows_its_position = (out / HEAD_META).is_file() and "score_token" in read_json_object(out / HEAD_META)
    if out.is_dir() and report_path.is_file() and knows_its_position and not force:
        report = read_json_object(report_path)
        differing = {k: report.get(k) for k, v in wanted.items() if report.get(k) != v}
        if not differing:
            log(f"prepare: reward model already at {out} (held-out agreement with the judge "
                f"{report.get('heldout_accuracy_gold', float('nan')):.1f}%); --force refits it")
            return report
        log(f"prepare: the reward model at {out} was prepared with "
            f"{', '.join(f'{k}={v}' for k, v in differing.items())}; refitting with "
            f"{', '.join(f'{k}={wanted[k]}' for k in differing)}")
    started = time.time()
    folder = out.parent
    folder.mkdir(parents=True, exist_ok=True)
    sampled = _samples(cfg, folder, log, limit, samples)
    t_samples = time.time() - started

    judge = SimulatedJudge()
    pairs = all_pairs(sampled)
    gold = annotate(judge, pairs, order="both", cache=AnnotationCache(cache_dir() / "annotations.sqlite"))
    noisy = training_labels(gold, p_flip=LABEL_FLIP, seed=cfg.seed)
    instruction_of = [p.id.split(":")[0] for p in pairs]
    train_ids, held_ids = split_instructions(instruction_of, cfg.seed)
    train = [i for i, x in enumerate(instruction_of) if x in train_ids]
    held = [i for i, x in enumerate(instruction_of) if x in held_ids]
    tok = load_tokenizer(cfg.policy)
    prompt_of = {s["id"]: data.format_prompt({"instruction": s["instruction"], "input": s["input"]},
                                             cfg.prompt_template, tok) for s in sampled}
    log(f"reward model ({method}): {len(train)} training pairs from {len(train_ids)} instructions "
        f"({100 * LABEL_FLIP:.0f}% label noise), {len(held)} pairs of {len(held_ids)} instructions held out")
    t0 = time.time()
    cv: list[float] = []
    adapter = None
    if method == "head":
        reward, cv = _fit_head(cfg, tok, sampled, prompt_of, pairs, train, noisy, gold, l2, read, log)
        how = {"trained_by": "Bradley-Terry head on the frozen SFT backbone", "l2": l2, "read": read}
    else:
        rows = []
        for i in train:
            p = pairs[i]
            good, bad = (p.output_2, p.output_1) if noisy[i] == 2 else (p.output_1, p.output_2)
            rows.append({"prompt": prompt_of[instruction_of[i]], "chosen": good, "rejected": bad})
        reward, adapter = _train_reward_model(cfg, tok, rows, folder / "trl", epochs=epochs, batch_size=batch_size,
                                              lr=lr, seed=cfg.seed)
        how = {"trained_by": f"trl {_version('trl')} RewardTrainer", "epochs": epochs, "lr": lr}
    tmp = folder / "reward-model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    # the head (and TRL's adapter) saved alone, naming the SFT model it reads
    save_reward_model(reward, tok, tmp, meta={**how, "pairs": len(train), "samples": samples,
                                              "label_flip": LABEL_FLIP, "policy": cfg.policy},
                      backbone_spec=cfg.policy, adapter=adapter)
    report_path.unlink(missing_ok=True)  # the old report must never describe the new model, even after a crash
    replace_folder(tmp, out)
    t_train = time.time() - t0

    # held-out agreement, read back from the saved directory exactly as PPO and the reward-model judge read it
    rm = RewardModelJudge(str(out), template=cfg.prompt_template)
    hp = [pairs[i] for i in held]
    # each response once, however many pairs it is in
    unique = sorted({(instruction_of[i], o) for i in held for o in (pairs[i].output_1, pairs[i].output_2)})
    scored = dict(zip(unique, rm.rewards([prompt_of[q] for q, _ in unique], [o for _, o in unique]).tolist())) \
        if unique else {}
    r1 = torch.tensor([scored[(instruction_of[i], pairs[i].output_1)] for i in held])
    r2 = torch.tensor([scored[(instruction_of[i], pairs[i].output_2)] for i in held])
    decided = [(a, b, g) for a, b, g in zip(r1.tolist(), r2.tolist(), [gold[i] for i in held]) if g not in (None, 1.5)]
    acc_gold = 100.0 * sum((b > a) == (g > 1.5) for a, b, g in decided) / max(1, len(decided))
    acc_noisy = 100.0 * sum((b > a) == (noisy[i] == 2) for a, b, i in zip(r1.tolist(), r2.tolist(), held)) / max(1, len(held))
    report = {
        "preset": preset_name, "reward_model": f"prepared:{preset_name}", "policy": cfg.policy, "method": method,
        "samples_per_instruction": samples, "pairs": len(pairs), "train_pairs": len(train),
        "heldout_pairs": len(decided), "train_instructions": len(train_ids), "heldout_instructions": len(held_ids),
        "label_flip": LABEL_FLIP, "heldout_accuracy_gold": acc_gold, "heldout_accuracy_noisy": acc_noisy,
        # the same fit on 5 other instruction splits: how much the held-out figure depends on the split
        "cv_accuracy_gold": [round(100 * a, 2) for a in cv],
        "judge": judge.identity(), **how,
        "seconds": {"samples": round(t_samples, 1), "fit": round(t_train, 1), "total": round(time.time() - started, 1)},
    }
    atomic_write_text(report_path, json.dumps(report, indent=2))
    if results is not None:
        path = ResultsStore(results).put(proxy_record(preset_name, report, out, [p.id for p in hp]))
        log(f"proxy_rm record: {path}")
    log(f"reward model ready at {out}: held-out agreement {acc_gold:.1f}% with the judge's noiseless preferences, "
        f"{acc_noisy:.1f}% with the noisy labels (n={len(decided)} pairs); {report['seconds']['total']:.0f} s")
    return report


def _install_packaged(preset_name: str, policy: str, wanted: dict, log) -> dict | None:
    """The proxy reward model shipped with the package for `preset_name` (a head on the SFT policy, kilobytes,
    and its prepare.json), copied into the cache when it was prepared with the requested settings; else None."""
    src = PACKAGED / preset_name
    if not (src / "prepare.json").is_file() or not is_reward_model_dir(src / "reward-model"):
        return None
    report = json.loads((src / "prepare.json").read_text())
    if report.get("policy") != policy or any(report.get(k) != v for k, v in wanted.items()):
        return None
    out = prepared_dir(preset_name)
    tmp = out.parent / "reward-model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src / "reward-model", tmp)  # creates the folders above it
    tmp.rename(out)
    atomic_write_text(out.parent / "prepare.json", json.dumps(report, indent=2))
    log(f"prepare: installed the proxy reward model shipped for preset {preset_name} at {out} (held-out agreement "
        f"with the judge {report['heldout_accuracy_gold']:.1f}%, fitted by `harness prepare --preset {preset_name}`);"
        f" `harness prepare --preset {preset_name} --force` refits it from newly sampled preferences")
    return report


def proxy_record(preset_name: str, report: dict, model_dir: Path, heldout_ids: list[str]) -> dict:
    """The `proxy_rm` record: how often the proxy reward model agrees with the gold judge on held-out pairs."""
    fingerprint = identity.model_fingerprint(str(model_dir))
    settings = {key: report[key] for key in ("method", "samples_per_instruction", "label_flip", "policy", "l2", "read",
                                             "epochs", "lr") if key in report}
    return make_record(
        preset=preset_name, run_id=f"prepared:{preset_name}", label={}, step=0, evaluator="proxy_rm",
        judge=report["judge"],
        eval_set={"name": "preference-heldout", "n": report["heldout_pairs"],
                  "hash": hashlib.sha256("\n".join(heldout_ids).encode()).hexdigest()[:12]},
        metrics={"gold_agreement": report["heldout_accuracy_gold"],
                 "gold_agreement_cv_mean": statistics.fmean(cv) if (cv := report.get("cv_accuracy_gold")) else None,
                 "gold_agreement_cv_sd": statistics.stdev(cv) if cv and len(cv) > 1 else None,
                 "noisy_agreement": report["heldout_accuracy_noisy"], "train_pairs": report["train_pairs"],
                 "heldout_pairs": report["heldout_pairs"]},
        details={"reward_model": fingerprint, "seconds": report["seconds"], "trained_by": report["trained_by"]},
        settings={**settings, "reward_model": fingerprint})


def _fit_head(cfg: TrainConfig, tok, sampled: list[dict], prompt_of: dict, pairs: list[Pair], train: list[int],
              noisy: list[int], gold: list[float | None], l2: float, score_token: str,
              log) -> tuple[ScalarHeadModel, list[float]]:
    """The frozen SFT backbone with a Bradley-Terry linear head on the hidden states it reads (`score_token`: the
    mean over the response and its EOS, or the EOS alone), and the 5-fold (by instruction) cross-validated
    agreement of the same fit with the gold labels."""
    backbone = load_backbone(cfg.policy, torch.float32).eval()
    reader = ScalarHeadModel(backbone, new_head(hidden_size(backbone), zero=True, seed=0), score_token=score_token)
    index, prompts, outputs = {}, [], []
    for s in sampled:
        for o in s["outputs"]:
            index[(s["id"], o)] = len(prompts)
            prompts.append(prompt_of[s["id"]])
            outputs.append(o)
    feats = _read_states(reader, tok, prompts, outputs, log)
    every = torch.tensor([[index[(p.id.split(":")[0], p.output_1)], index[(p.id.split(":")[0], p.output_2)]]
                          for p in pairs])
    noisy_all = torch.tensor([1.0 if n == 2 else 0.0 for n in noisy])
    gold_all = torch.tensor([float("nan") if g in (None, 1.5) else float(g > 1.5) for g in gold])
    rows, labels = every[train], noisy_all[train]
    head = fit_bradley_terry_head(feats, rows, labels, l2=l2)
    with torch.no_grad():
        fitted = head(feats).squeeze(-1)
    log(f"  head fitted: agreement with its own noisy training labels {100 * pair_accuracy(fitted, rows, labels):.1f}%")
    cv = cross_validated_agreement(feats, every, noisy_all, gold_all, [p.id.split(":")[0] for p in pairs], l2=l2,
                                   seed=cfg.seed)
    log(f"  5-fold agreement with the gold labels by instruction: {', '.join(f'{100 * a:.1f}%' for a in cv)}")
    return ScalarHeadModel(backbone, head, score_token=score_token).eval(), cv


def _read_states(reader: ScalarHeadModel, tok, prompts: list[str], outputs: list[str], log,
                 batch_size: int = 16) -> torch.Tensor:
    """The hidden states `reader` reads for each prompt + response, exactly as the reward-model judge (and so the
    held-out check below) reads them, with progress."""
    started = time.time()

    def progress(done: int, total: int) -> None:
        if done == total or (done // batch_size) % 10 == 1:
            rate = done / max(time.time() - started, 1e-9)
            log(f"  features: {done}/{total} responses, {rate:.1f}/s, ETA {(total - done) / max(rate, 1e-9):.0f} s")

    return read_states(reader, tok, prompts, outputs, batch_size=batch_size, progress=progress)


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def _train_reward_model(cfg: TrainConfig, tok, rows: list[dict], workdir: Path, *, epochs: float, batch_size: int,
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
