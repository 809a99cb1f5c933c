"""`harness prepare --preset P`: AlpacaFarm in miniature - preference data and a proxy reward model.

This module orchestrates (settings, caching, the reward-model directory, the record); the work is the libraries':
1. sample K responses (`samples`) per `preference` instruction from the SFT policy, cached in `samples.json`, and
   label every pair of an instruction's responses with the preset grid's judge (`harness.grid`: the simulated
   rubric for `tiny`, the learned judge for `miniature`; "gold", and 25%-flipped training labels), split 85/15 by
   instruction (`evals.preference_data`);
2. fit the proxy reward model on the training pairs' noisy labels:
   - `head` (the default): the SFT backbone frozen, a linear head fitted by Bradley-Terry maximum likelihood on the
     last hidden states it reads (`read`): their mean over the response and its EOS (`response_mean`, the default:
     the better measured agreement) or the EOS state alone (`eos`) (`evals.proxy_fit`, `trainers.reward_fit`);
   - `trl`: TRL's RewardTrainer, LoRA plus a trained `score` head (`trainers.reward_trl`);
3. write the harness reward-model directory at `prepared:P` ($HARNESS_CACHE/prepared/P/reward-model), and its
   held-out agreement with the judge's noiseless preferences ("gold") and with the noisy labels
   (`evals.proxy_fit.heldout_agreement`), in `prepare.json` beside it and as a `proxy_rm` record (metric
   `gold_agreement`, with the number of training pairs) in the results store.

`--ship` also copies the head and its prepare.json into the package (`harness/data/prepared/P`), the copy a fresh
install starts from.

Idempotent: the samples are kept and reused; a model prepared with other settings (method, samples, l2, read) or
labelled by another judge (another version of the learned judge included) is refitted, and `--force` refits it
anyway. Where nothing is prepared yet and the package ships a proxy for the preset prepared with the requested
settings and the preset's judge (`harness/data/prepared/`, the head alone), it is installed instead.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import statistics
import time
from pathlib import Path

from evals.preference_data import LABEL_FLIP, all_pairs, label_pairs, sample_responses, split_instructions
from evals.proxy_fit import fit_head, heldout_agreement
from harness.results import ResultsStore, make_record
from trainers import data, identity
from trainers.run_config import RunConfig
from trainers.heads import HEAD_META, SCORE_TOKENS, is_reward_model_dir, prepared_dir, save_reward_model
from trainers.io import atomic_write_text, read_json_object, replace_folder
from trainers.models import load_tokenizer

PACKAGED = Path(__file__).parent / "data" / "prepared"  # proxy reward models shipped with the package, by preset
METHODS = ("head", "trl")
HEAD_READS = tuple(t for t in SCORE_TOKENS if t != "last_token")  # what a fitted head may read (all end with EOS)


def prepare(preset_name: str, run: RunConfig, *, log=None, force: bool = False, limit: int | None = None,
            samples: int = 8, method: str = "head", l2: float = 1.0, read: str = "response_mean",
            epochs: float = 1.0, batch_size: int = 8, lr: float = 2e-4,
            results: str | Path | None = "results", ship: bool = False) -> dict:
    log = log or (lambda msg: print(msg, flush=True))
    cfg = run.train
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not known; valid: {', '.join(METHODS)}")
    if samples < 2:
        raise ValueError(f"samples={samples} must be >= 2 (pairs are formed among an instruction's responses)")
    if read not in HEAD_READS:
        raise ValueError(f"read={read!r} is not known; valid: {', '.join(HEAD_READS)}")
    if not l2 >= 0 or l2 == float("inf"):
        raise ValueError(f"l2={l2} must be a finite number >= 0 (the head's L2 penalty)")
    judge = gold_judge(preset_name)  # an online-judged preset fails here, before any sampling
    out = prepared_dir(preset_name)
    report_path = out.parent / "prepare.json"
    wanted = {"method": method, "samples_per_instruction": samples,
              **({"l2": l2, "read": read} if method == "head" else {"epochs": epochs, "lr": lr})}
    # a proxy learns one judge's labels: one labelled by another judge (or another version of it) is refitted
    wanted["judge"] = judge.identity()
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
            f"{', '.join(f'{k}={_shown(v)}' for k, v in differing.items())}; refitting with "
            f"{', '.join(f'{k}={_shown(wanted[k])}' for k in differing)}")
    started = time.time()
    folder = out.parent
    folder.mkdir(parents=True, exist_ok=True)
    sampled = sample_responses(cfg, folder, log, limit, samples, run.execution.decoding)
    t_samples = time.time() - started

    pairs = all_pairs(sampled)
    gold, noisy, judge = label_pairs(pairs, cfg.seed, judge)
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
        reward, cv = fit_head(cfg, tok, sampled, prompt_of, pairs, train, noisy, gold, l2, read, log)
        how = {"trained_by": "Bradley-Terry head on the frozen SFT backbone", "l2": l2, "read": read}
    else:
        rows = []
        for i in train:
            p = pairs[i]
            good, bad = (p.output_2, p.output_1) if noisy[i] == 2 else (p.output_1, p.output_2)
            rows.append({"prompt": prompt_of[instruction_of[i]], "chosen": good, "rejected": bad})
        from trainers.reward_trl import train_reward_model, trl_version  # TRL: only for this method

        reward, adapter = train_reward_model(cfg, tok, rows, folder / "trl", epochs=epochs, batch_size=batch_size,
                                             lr=lr, seed=cfg.seed)
        how = {"trained_by": f"trl {trl_version()} RewardTrainer", "epochs": epochs, "lr": lr}
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
    hp = [pairs[i] for i in held]
    acc_gold, acc_noisy, decided = heldout_agreement(str(out), cfg.prompt_template, pairs, held, instruction_of,
                                                     prompt_of, gold, noisy)
    report = {
        "preset": preset_name, "reward_model": f"prepared:{preset_name}", "policy": cfg.policy, "method": method,
        "samples_per_instruction": samples, "pairs": len(pairs), "train_pairs": len(train),
        "heldout_pairs": decided, "train_instructions": len(train_ids), "heldout_instructions": len(held_ids),
        "label_flip": LABEL_FLIP, "heldout_accuracy_gold": acc_gold, "heldout_accuracy_noisy": acc_noisy,
        # the same fit on 5 other instruction splits: how much the held-out figure depends on the split
        "cv_accuracy_gold": [round(100 * a, 2) for a in cv],
        "judge": judge, **how,
        "seconds": {"samples": round(t_samples, 1), "fit": round(t_train, 1), "total": round(time.time() - started, 1)},
    }
    atomic_write_text(report_path, json.dumps(report, indent=2))
    if results is not None:
        path = ResultsStore(results).put(proxy_record(preset_name, report, out, [p.id for p in hp]))
        log(f"proxy_rm record: {path}")
    if ship:
        shipped = ship_prepared(preset_name, out, report)
        log(f"prepare: shipped the proxy reward model in the package at {shipped}")
    log(f"reward model ready at {out}: held-out agreement {acc_gold:.1f}% with the judge's noiseless preferences, "
        f"{acc_noisy:.1f}% with the noisy labels (n={decided} pairs); {report['seconds']['total']:.0f} s")
    return report


def _shown(value) -> str:
    """A setting in one line: a judge as name (version)."""
    if isinstance(value, dict) and "name" in value:
        return f"{value['name']} ({value.get('version')})"
    return str(value)


def gold_judge(preset_name: str):
    """The judge whose preferences the proxy learns: the preset grid's (offline) judge; the rubric for a preset
    without a grid."""
    from evals.judges import judge_spec, make_judge
    from harness.grid import GRIDS

    name = GRIDS[preset_name].judge if preset_name in GRIDS else "simulated"
    if not judge_spec(name).offline:
        raise ValueError(f"preset={preset_name!r} is judged by {name!r}, which is not an offline judge; "
                         "`harness prepare` labels preferences with an offline judge only")
    return make_judge(name)


def ship_prepared(preset_name: str, model_dir: Path, report: dict) -> Path:
    """Copy the prepared head and its report into the package (`PACKAGED/preset`), replacing what was shipped."""
    dest = PACKAGED / preset_name
    tmp = PACKAGED / f".{preset_name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model_dir, tmp / "reward-model")
    atomic_write_text(tmp / "prepare.json", json.dumps(report, indent=2))
    replace_folder(tmp, dest)
    return dest


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
