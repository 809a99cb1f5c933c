"""How far decoding runs from its memory floor, and what each decoding lever buys, all measured in one run.

One decoding step must read every weight it touches and the keys and values it attends to:

    bytes_step = sum_W numel(W) * itemsize(W)       every linear weight of every layer, the norms and the LM head
                                                    (LoRA A and B too where they are not folded into the weight)
               + B * d * itemsize(E)                the B embedding rows looked up (0 when E is the LM head's weight)
               + 2 * L * B * H_kv * d_head * itemsize(kv) * l_mean     keys and values of the L layers
    l_mean     = w + n / 2                          w: padded prompt width; step k = 1 .. n-1 attends to w + k slots
    floor      = bytes_step / bandwidth

`bandwidth` is the best of several streaming reads (`torch.sum`) of a float32 buffer far larger than the
last-level cache, with decoding's thread count, measured before each round of timings. The decode time per step is
(T(n) - T(1)) / (n - 1), T(k) being one call of `trainers.sampling.sample` drawing k tokens for B prompts (prefill
and first draw cancel; the per-call set-up of the levers, such as packing weights, is counted in the steps).

The work unit: SmolLM2-135M-Instruct with LoRA (r 8, alpha 64, q/k/v/o, random updates so that folding them has
something to fold) as `trainers.build` assembles the policy, the first 16 AlpacaFarm evaluation prompts of at most
128 tokens, 64 tokens at temperature 1, prompts read in groups of 4. Each lever is switched off alone (same
process, rounds alternating), and a row with every decoding lever off gives the time before them. Each row says
whether it drew the same tokens as the defaults (same seed) and the largest difference of its kept logits.

  python -m benchmarks.decode_floor [--repeats 3] [--threads 2]
  python -m benchmarks.decode_floor --dry-run --out DIR     # the tiny random Llama, in seconds

writes benchmarks/results/decode_floor.{json,md} (a dry run writes to --out only).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

RESULTS = Path(__file__).parent / "results"
GiB = 1 << 30


# --- the floor -------------------------------------------------------------------------------------------------

def _unique_parameters(model: nn.Module) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for p in model.parameters():
        seen.setdefault(id(p), p)
    return list(seen.values())


def _idle_adapter_parameters(model: nn.Module) -> set[int]:
    """Ids of LoRA parameters a decoding step does not read: folded into the weight, disabled, or inactive."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return set()
    idle: set[int] = set()
    for module in model.modules():
        if isinstance(module, LoraLayer):
            live = set() if module.merged or module.disable_adapters else set(module.active_adapters)
            for name in module.lora_A:
                if name not in live:
                    idle.update(id(p) for p in (*module.lora_A[name].parameters(), *module.lora_B[name].parameters()))
    return idle


def weight_bytes(model: nn.Module, batch: int) -> int:
    """Bytes of the weights one decoding step of `model` reads for `batch` rows (module docstring): every parameter
    in its dtype, except the input embedding (B rows, or nothing more when the LM head shares it) and LoRA
    parameters that the step does not read."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    embed = lm.get_input_embeddings().weight
    head = lm.get_output_embeddings().weight if lm.get_output_embeddings() is not None else None
    idle = _idle_adapter_parameters(model)
    total = 0
    for p in _unique_parameters(model):
        if id(p) in idle:
            continue
        if p is embed and embed is not head:
            total += batch * embed.size(1) * embed.element_size()
        elif p is not embed or embed is head:
            total += p.numel() * p.element_size()
    return total


def kv_bytes(layers: int, batch: int, kv_heads: int, head_dim: int, itemsize: int, width: int,
             new_tokens: int) -> float:
    """Keys and values read per decoding step, averaged over the n - 1 steps: 2 L B H_kv d_head s (w + n / 2)."""
    return 2 * layers * batch * kv_heads * head_dim * itemsize * (width + new_tokens / 2)


def step_bytes(model: nn.Module, batch: int, width: int, new_tokens: int) -> dict:
    """`bytes_step` of the module docstring for `model` in its present state (folded or not), as its parts."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = lm.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    itemsize = lm.get_input_embeddings().weight.element_size()  # keys and values are in the model's compute dtype
    weights = weight_bytes(model, batch)
    kv = kv_bytes(cfg.num_hidden_layers, batch, cfg.num_key_value_heads, head_dim, itemsize, width, new_tokens)
    return {"weights": weights, "kv_cache": kv, "total": weights + kv}


def synchronize(device: torch.device) -> None:
    """Wait for `device`'s queued work (CUDA runs asynchronously; a CPU has nothing queued)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def read_bandwidth(buffer: torch.Tensor, repeats: int = 3) -> float:
    """Bytes per second of the best of `repeats` streaming reads of `buffer` (one `torch.sum` each), on its device."""
    best = float("inf")
    buffer.sum()  # a first read: CUDA loads its reduction kernel once
    for _ in range(repeats):
        synchronize(buffer.device)
        t0 = time.perf_counter()
        buffer.sum()
        synchronize(buffer.device)
        best = min(best, time.perf_counter() - t0)
    return buffer.numel() * buffer.element_size() / best


def matmul_rate(dtype: torch.dtype, size: int = 2048, repeats: int = 3) -> float:
    """FLOP/s of the best of `repeats` size x size matrix products in `dtype`: what this CPU's cores compute at
    best, against which a decoding step's 2 B sum(in x out) FLOPs give its compute floor."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=gen).to(dtype) for _ in range(2))
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


# --- the work unit ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Lever:
    """One row: the decoding settings it runs with (all on unless switched off here)."""

    name: str
    setting: str  # the ExecutionConfig setting(s) that give this row, as `harness train --set` takes them
    off: frozenset = field(default_factory=frozenset)  # levers switched off
    dtype: str = ""  # another frozen dtype than the default one ('' = the default)


DECODE_LEVERS = ("lean_decode_step", "packed_decode_weights", "merge_adapters_for_rollout", "few_row_decode_products")


def rows(other_dtype: str) -> list[Lever]:
    levers = [Lever("defaults", "")]
    levers += [Lever(f"{name} off", f"{name}=false", frozenset({name})) for name in DECODE_LEVERS]
    levers.append(Lever("every decoding lever off", " ".join(f"{n}=false" for n in DECODE_LEVERS),
                        frozenset(DECODE_LEVERS)))
    levers.append(Lever(f"frozen weights in {other_dtype}", f"frozen_dtype={other_dtype}", dtype=other_dtype))
    return levers


@dataclass
class WorkUnit:
    models: dict  # dtype name -> PPOModels
    query_ids: torch.Tensor
    query_mask: torch.Tensor
    new_tokens: int
    prefill_rows: int
    pad_id: int


def _policy_models(spec: str, prompts: Path, dtype: torch.dtype):
    from trainers.build import build_models
    from trainers.config import TrainConfig

    cfg = TrainConfig(policy=spec, reward="rule:length:1:64", value_init="policy", prompts=str(prompts),
                      prompt_split="", lora_dropout=0.0)
    models = build_models(cfg, torch.device("cpu"), frozen=dtype)
    with torch.no_grad():  # random LoRA updates, so that folding them has something to fold
        gen = torch.Generator().manual_seed(0)
        for name, p in models.policy.named_parameters():
            if "lora_B" in name:
                p.copy_(0.01 * torch.randn(p.shape, generator=gen))
    models.policy.eval()
    return models


def work_unit(dry_run: bool, dtypes: list[str], new_tokens: int, tmp: Path) -> WorkUnit:
    from trainers import data, models as model_specs
    from trainers.precision import DTYPES
    from trainers.rollout import left_pad

    if dry_run:
        spec = model_specs.TINY
        records = [{"instruction": t, "input": ""} for t in ("Name a river.", "Describe bread in one line.",
                                                              "Why do owls hoot?", "Tea or coffee?")]
        prompts = tmp / "prompts.json"
        prompts.write_text(json.dumps(records))
    else:
        from benchmarks.side_by_side import write_prompts

        spec = model_specs.SMOLLM2
        prompts = write_prompts(tmp / "prompts.json")
        records = json.loads(prompts.read_text())
    built = {name: _policy_models(spec, prompts, DTYPES[name]) for name in dtypes}
    tok = next(iter(built.values())).tokenizer
    ids, mask = left_pad([tok(data.format_prompt(r, "alpaca", tok))["input_ids"] for r in records],
                         tok.pad_token_id, torch.device("cpu"))
    return WorkUnit(built, ids, mask, new_tokens, 4, tok.pad_token_id)


def decode_step_seconds(draw, tokens: int, repeats: int = 1):
    """(seconds per decoding step, the last `tokens`-token result): (T(n) - T(1)) / (n - 1), T(k) the best of
    `repeats` calls of `draw(k)`, one sampling call drawing k tokens per row (its prefill and first draw cancel),
    after one untimed call.
    `draw` returns once its device is done (`synchronize`)."""
    def timed(k: int):
        t0 = time.perf_counter()
        out = draw(k)
        return time.perf_counter() - t0, out

    draw(1)  # untimed: a setting's first call pays one-off costs (allocations, lazy set-up) that T(1) must not hold
    first = min(timed(1)[0] for _ in range(repeats))
    whole, out = min((timed(tokens) for _ in range(repeats)), key=lambda run: run[0])
    return (whole - first) / (tokens - 1), out


def decode_seconds(unit: WorkUnit, lever: Lever, dtype: str):
    """(seconds per decoding step, the n-token samples, bytes per step) of one lever setting."""
    from trainers.sampling import sample

    models = unit.models[dtype]
    on = lambda name: name not in lever.off  # noqa: E731

    def context():
        return models.sampling_context(on("merge_adapters_for_rollout"), on("few_row_decode_products"))

    def draw(n: int):
        with context():
            return sample(models.policy, unit.query_ids, unit.query_mask, max_new_tokens=n, temperature=1.0,
                          stop_ids=[], pad_id=unit.pad_id, generator=torch.Generator().manual_seed(0),
                          prefill_rows=unit.prefill_rows, lean_step=on("lean_decode_step"),
                          packed_weights=on("packed_decode_weights"))

    seconds, out = decode_step_seconds(draw, unit.new_tokens)
    with context():  # what the step reads depends on the context (folded adapters are not read apart)
        bytes_ = step_bytes(models.policy, unit.query_ids.size(0), unit.query_ids.size(1), unit.new_tokens)
    return seconds, out, bytes_


def linear_products(model: nn.Module, pack_rows: int) -> list[tuple[object, int, int]]:
    """(x -> outputs, in, FLOPs per row) for each product a lean decoding step of a Llama model runs, as
    `trainers.decode_step` builds them: q/k/v and gate/up as one product each, o, down, the LM head; LoRA
    branches included (their FLOPs, under 1%, left out)."""
    from trainers.decode_step import group_fn, linear_fn

    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    found = []
    for layer in lm.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        for fn, modules in ((group_fn([attn.q_proj, attn.k_proj, attn.v_proj], pack_rows), [attn.q_proj, attn.k_proj,
                             attn.v_proj]), (linear_fn(attn.o_proj, pack_rows), [attn.o_proj]),
                            (group_fn([mlp.gate_proj, mlp.up_proj], pack_rows), [mlp.gate_proj, mlp.up_proj]),
                            (linear_fn(mlp.down_proj, pack_rows), [mlp.down_proj])):
            bases = [m.get_base_layer() if hasattr(m, "get_base_layer") else m for m in modules]
            found.append((fn, bases[0].in_features, sum(2 * b.in_features * b.out_features for b in bases)))
    head = lm.lm_head
    found.append((linear_fn(head, pack_rows), head.in_features, 2 * head.in_features * head.out_features))
    return found


def products_seconds(models, batch: int, repeats: int = 5) -> tuple[float, float]:
    """(seconds, FLOPs) of one decoding step's linear products alone, back to back on [B, 1, in] inputs, with the
    default levers (folded LoRA, W x^T products, packed weights): the part of a step that no lever outside the
    products can remove. FLOPs: 2 B sum(in x out)."""
    policy = models.policy
    dtype = policy.get_input_embeddings().weight.dtype
    with models.sampling_context(True, True):
        products = linear_products(policy, batch)
        inputs = {n: torch.randn(batch, 1, n).to(dtype) for _, n, _ in products}
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for fn, n, _ in products:
                fn(inputs[n])
            best = min(best, time.perf_counter() - t0)
    return best, batch * sum(flops for _, _, flops in products)


# Operator groups of a lean decoding step, by the profiler's names (self time; first match wins).
STEP_PARTS = (("bf16 packed products", ("mkldnn::_linear_pointwise",)),
              ("float32 products (LoRA A and B)", ("aten::mm", "aten::addmm")),
              ("attention (SDPA)", ("scaled_dot_product",)))


def _lean_steps(models, unit: WorkUnit, steps: int, adapters: bool = True):
    """(seconds per step, decoder) of `steps` lean decoding steps with the default levers, after 3 warm-up steps;
    `adapters` False disables the policy's LoRA adapters (a diagnostic: what their branches cost)."""
    import contextlib

    from trainers.decode_step import LeanDecoder
    from trainers.sampling import position_ids_from_mask, prefill

    policy = models.policy
    off = policy.disable_adapter() if not adapters else contextlib.nullcontext()
    with models.sampling_context(True, True), off:
        mask = unit.query_mask.long()
        room = 3 + 2 * steps  # warm-up, timed, then as many profiled steps on the same cache
        last, cache = prefill(policy, unit.query_ids, mask, unit.prefill_rows, room=room)
        decoder = LeanDecoder.build(policy, cache, mask, room, unit.query_ids.size(0))
        if decoder is None:
            return None
        token, position = last.float().argmax(-1), position_ids_from_mask(mask)[:, -1:] + 1
        for _ in range(3):
            decoder(token, position)
            position = position + 1
        t0 = time.perf_counter()
        for _ in range(steps):
            decoder(token, position)
            position = position + 1
        return (time.perf_counter() - t0) / steps, decoder, token, position


def step_breakdown(unit: WorkUnit, dtype: str, steps: int) -> dict | None:
    """Where a lean decoding step's time goes: ms per step unprofiled, with the adapters disabled (a diagnostic,
    not a setting), and the profiler's self time per operator group (`STEP_PARTS`, the rest as 'other operators')
    over `steps` more steps, with the operator calls per step (nested calls included); None where the lean step
    does not apply."""
    from torch.profiler import profile

    models = unit.models[dtype]
    timed = _lean_steps(models, unit, steps)
    if timed is None:
        return None
    seconds, decoder, token, position = timed
    without = _lean_steps(models, unit, steps, adapters=False)
    with models.sampling_context(True, True), profile() as prof:
        for _ in range(steps):
            decoder(token, position)
            position = position + 1
    # With float32 frozen weights the base layers' products are float32 too (and the adapters folded into them).
    groups = [(name if dtype == "bfloat16" or "float32" not in name else "float32 products", keys)
              for name, keys in STEP_PARTS]
    parts = {name: 0.0 for name, _ in groups} | {"other operators": 0.0}
    calls = 0
    for event in prof.key_averages():
        name = next((part for part, keys in groups if any(k in event.key for k in keys)), "other operators")
        parts[name] += event.self_cpu_time_total / 1e3 / steps
        calls += event.count
    return {"ms_per_step": 1e3 * seconds, "ms_per_step_adapters_disabled": 1e3 * without[0] if without else None,
            "profiled_ms_per_step": parts, "operator_calls_per_step": calls / steps, "steps": steps}


# --- the run ---------------------------------------------------------------------------------------------------

def measure(unit: WorkUnit, levers: list[Lever], default_dtype: str, repeats: int, buffer: torch.Tensor,
            log=print) -> dict:
    from trainers.precision import DTYPES

    """Rounds of: bandwidth, then every lever's decode time; per-round ratios and the best of each."""
    rounds = []
    reference: dict[str, object] = {}
    facts: dict[str, dict] = {}
    for r in range(repeats):
        bandwidth = read_bandwidth(buffer)
        times = {}
        for lever in levers:
            dtype = lever.dtype or default_dtype
            seconds, out, bytes_ = decode_seconds(unit, lever, dtype)
            times[lever.name] = seconds
            if lever.name == "defaults":
                reference[dtype] = out
            if r == 0:
                ref = reference.get(dtype)
                facts[lever.name] = {
                    "setting": lever.setting, "dtype": dtype, "bytes_per_step": bytes_,
                    "same_tokens_as_defaults": None if ref is None else bool(torch.equal(ref.tokens, out.tokens)),
                    "max_abs_logit_difference": None if ref is None or not torch.equal(ref.tokens, out.tokens)
                    else float((ref.logits - out.logits).abs().max()),
                }
            log(f"round {r + 1}: {lever.name}: {seconds * 1e3:.1f} ms/step "
                f"({facts[lever.name]['bytes_per_step']['total'] / seconds / 1e9:.1f} GB/s; "
                f"read bandwidth {bandwidth / 1e9:.1f} GB/s)")
        rounds.append({"bandwidth_bytes_per_s": bandwidth, "seconds_per_step": times})
    best_bw = max(r["bandwidth_bytes_per_s"] for r in rounds)
    seconds, flops = products_seconds(unit.models[default_dtype], unit.query_ids.size(0))
    defaults_bytes = facts["defaults"]["bytes_per_step"]["total"]
    rate = matmul_rate(DTYPES[default_dtype], 2048)
    products = {"ms": 1e3 * seconds, "gflop": flops / 1e9, "gflop_per_s": flops / seconds / 1e9,
                "ratio_to_floor": seconds / (defaults_bytes / best_bw), "peak_matmul_gflop_per_s": rate / 1e9,
                "compute_floor_ms": 1e3 * flops / rate}
    log(f"linear layers alone: {products['ms']:.1f} ms per step ({products['gflop_per_s']:.0f} GFLOP/s)")
    table = []
    for lever in levers:
        per_round = [r["seconds_per_step"][lever.name] for r in rounds]
        bytes_ = facts[lever.name]["bytes_per_step"]["total"]
        ratios = [s / (bytes_ / r["bandwidth_bytes_per_s"]) for s, r in zip(per_round, rounds)]
        table.append({"lever": lever.name, **facts[lever.name], "ms_per_step_best": 1e3 * min(per_round),
                      "ms_per_step_median": 1e3 * statistics.median(per_round),
                      "ms_per_step_rounds": [1e3 * s for s in per_round],
                      "floor_ms": 1e3 * bytes_ / best_bw, "ratio_best": min(per_round) / (bytes_ / best_bw),
                      "ratio_per_round": ratios})
    return {"bandwidth_bytes_per_s_best": best_bw, "rounds": rounds, "rows": table, "linear_layers_alone": products}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def markdown(result: dict) -> str:
    head = result["header"]
    lines = [head, "",
             f"Read bandwidth (best of {len(result['rounds'])} rounds): "
             f"{result['bandwidth_bytes_per_s_best'] / 1e9:.1f} GB/s; per round: "
             + ", ".join(f"{r['bandwidth_bytes_per_s'] / 1e9:.1f}" for r in result["rounds"]) + " GB/s. "
             f"The step's linear layers alone (defaults, back to back, LoRA branches included): "
             f"{result['linear_layers_alone']['ms']:.1f} ms = {result['linear_layers_alone']['ratio_to_floor']:.2f} "
             f"x floor, {result['linear_layers_alone']['gflop']:.2f} GFLOP at "
             f"{result['linear_layers_alone']['gflop_per_s']:.0f} GFLOP/s; at this CPU's best matrix-product rate "
             f"({result['linear_layers_alone']['peak_matmul_gflop_per_s']:.0f} GFLOP/s, 2048 x 2048 in "
             f"{result['default_dtype']}) they would take {result['linear_layers_alone']['compute_floor_ms']:.1f} "
             "ms (the compute floor).", "",
             "| row | setting | dtype | MB/step | floor ms | ms/step best | ms/step median | x floor (best) | "
             "x floor per round | same tokens | max logit diff |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        diff = row["max_abs_logit_difference"]
        lines.append(
            f"| {row['lever']} | `{row['setting'] or '(defaults)'}` | {row['dtype']} | "
            f"{row['bytes_per_step']['total'] / 1e6:.3g} | {row['floor_ms']:.1f} | {row['ms_per_step_best']:.1f} | "
            f"{row['ms_per_step_median']:.1f} | {row['ratio_best']:.2f} | "
            f"{', '.join(f'{x:.2f}' for x in row['ratio_per_round'])} | {row['same_tokens_as_defaults']} | "
            f"{'-' if diff is None else f'{diff:.2g}'} |")
    parts = result.get("step_breakdown")
    if parts:
        profiled = parts["profiled_ms_per_step"]
        lines += ["", f"Where a lean step's time goes (defaults, {parts['steps']} steps after 3 warm-up steps): "
                  f"{parts['ms_per_step']:.1f} ms per step; with the policy's adapters disabled (a diagnostic, not a "
                  f"setting) {_ms(parts['ms_per_step_adapters_disabled'])}. Profiled (torch.profiler, self time; "
                  f"{sum(profiled.values()):.1f} ms per step under the profiler, "
                  f"{parts['operator_calls_per_step']:.0f} operator calls per step, nested ones included):", "",
                  "| operators | ms per step |", "|---|---|"]
        lines += [f"| {name} | {ms:.1f} |" for name, ms in profiled.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of bandwidth + every lever (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for decoding and the read (default 2)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens drawn per row (default 64)")
    parser.add_argument("--buffer-mib", type=int, default=1024, help="size of the read buffer (default 1024 MiB)")
    parser.add_argument("--dry-run", action="store_true", help="the tiny random Llama, 8 tokens, one round")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of decode_floor.{json,md}")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.repeats, args.tokens, args.buffer_mib = 1, 8, 64
        if args.out == RESULTS:
            parser.error("--dry-run needs --out (the committed results are measured ones)")

    from harness import machine
    from trainers.precision import resolve_frozen_dtype

    torch.set_num_threads(args.threads)
    default = str(resolve_frozen_dtype("auto", torch.device("cpu"))).removeprefix("torch.")
    other = "float32" if default == "bfloat16" else "bfloat16"
    with tempfile.TemporaryDirectory() as tmp:
        unit = work_unit(args.dry_run, [default, other], args.tokens, Path(tmp))
    buffer = torch.ones(args.buffer_mib * (1 << 20) // 4)
    with torch.inference_mode():
        result = measure(unit, rows(other), default, args.repeats, buffer)
        result["step_breakdown"] = step_breakdown(unit, default, 4 if args.dry_run else 10)
    command = "python -m benchmarks.decode_floor" + (" --dry-run" if args.dry_run else "") + (
        f" --repeats {args.repeats}" if not args.dry_run else "")
    model = "tiny-random-llama" if args.dry_run else "SmolLM2-135M-Instruct"
    result["header"] = (
        f"Decoding against its memory floor: {model}, {unit.query_ids.size(0)} rows, {args.tokens} tokens at "
        f"temperature 1, prompts padded to {unit.query_ids.size(1)}; frozen_dtype=auto resolves to {default}; "
        f"{args.threads} threads; {machine.describe()}; torch {torch.__version__}; command: `{command}`. "
        "The read bandwidth can change between rounds (other jobs, other tenants of the host): compare rows within a "
        "round (ratio per round), not across runs.")
    result.update(machine=machine.describe(), torch=torch.__version__, python=platform.python_version(),
                  default_dtype=default, threads=args.threads, tokens=args.tokens, command=command,
                  rows_in_batch=unit.query_ids.size(0), prompt_width=unit.query_ids.size(1))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decode_floor.json").write_text(json.dumps(result, indent=2))
    (args.out / "decode_floor.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
