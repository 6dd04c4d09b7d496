"""`llm-unlearn plan-memory`: predicted peak memory per device of an unlearning run, from the
model's config alone (`llm_unlearn.memory.estimate`; no weights are loaded)."""

from __future__ import annotations

import argparse
import json


def _ints(text: str, flag: str) -> list[int]:
    from llm_unlearn.errors import UnlearnError

    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UnlearnError(f"{flag} expects comma-separated integers, got '{text}'") from None
    if not values or min(values) < 1:
        raise UnlearnError(f"{flag} expects integers >= 1, got '{text}'")
    return values


# kept here, not imported from llm_unlearn.memory, so that building the parser does not import transformers
BUILTIN_NAMES = "llama-3.2-1b, llama-2-7b, zephyr-7b, llama-3.1-8b, smollm2, smollm2-360m"


def register(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text + ". Reads only the config: a model directory, "
                       f"a config.json, a Hub id with a cached config, or a built-in model ({BUILTIN_NAMES}).")
    p.add_argument("--model", required=True, help="model directory, config.json, built-in name or Hub id (config only)")
    p.add_argument("--method", default="npo", help="unlearning method: npo (default), grad_diff, grad_ascent, simnpo, "
                   "idk_dpo, rmu")
    p.add_argument("--modes", default="full,lora,qlora", help="comma list of full, lora, qlora")
    p.add_argument("--optims", default="adamw_torch,adamw_8bit,adafactor",
                   help="comma list of adamw_torch, adamw_8bit, paged_adamw_8bit, adafactor, sgd (full weights; "
                        "LoRA/QLoRA rows use the first)")
    p.add_argument("--in-backward", action="store_true",
                   help="also show full-weight rows with the optimizer step in backward (1 device)")
    p.add_argument("--batch-size", type=int, default=4, help="items per device and micro-batch (default 4)")
    p.add_argument("--seq", type=int, default=512, help="padded tokens per item (default 512)")
    p.add_argument("--answer-len", type=int, default=None, help="answer tokens per item (default seq/2)")
    p.add_argument("--dtype", default="bfloat16", help="parameter dtype: bfloat16, float16, float32 (default bfloat16)")
    p.add_argument("--gpus", default="1", help="comma list of device counts, e.g. 1,2,4,8 (FSDP2 full sharding above 1)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="activation checkpointing on")
    p.add_argument("--no-split-backward", action="store_true", help="forget and retain graphs backwarded together")
    p.add_argument("--lora-r", type=int, default=8, help="LoRA rank (default 8)")
    p.add_argument("--device-gb", type=float, default=None,
                   help="mark rows that do not fit a device of this many GB (with 0.8 GB runtime, 10%% slack)")
    p.add_argument("--parts", action="store_true",
                   help="also print each row's parts (weights, gradients, optimizer state, activations, …)")
    p.add_argument("--json", action="store_true", help="print the estimates as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llm_unlearn.errors import UnlearnError
    from llm_unlearn.memory import MODES, OPTIMS, ModelShape, estimate, load_config

    config, source = load_config(args.model)
    shape = ModelShape.from_config(config, name=str(args.model))
    gpus = _ints(args.gpus, "--gpus")
    modes = [m for m in args.modes.split(",") if m]
    optims = [o for o in args.optims.split(",") if o]
    for m in modes:
        if m not in MODES:
            raise UnlearnError(f"--modes: unknown mode '{m}' (choose from {', '.join(MODES)})")
    for o in optims:
        if o not in OPTIMS:
            raise UnlearnError(f"--optims: unknown optimizer '{o}' (choose from {', '.join(OPTIMS)})")
    if not optims:
        raise UnlearnError("--optims is empty")
    rows: list[tuple[str, dict]] = []
    for mode in modes:
        for optim in optims if mode == "full" else optims[:1]:
            for inb in (False, True) if (mode == "full" and args.in_backward) else (False,):
                rows.append((f"{mode}, {optim}{', in backward' if inb else ''}",
                             dict(mode=mode, optim=optim, optim_in_backward=inb)))
    common = dict(method=args.method, batch=args.batch_size, seq=args.seq, dtype=args.dtype,
                  checkpointing=args.gradient_checkpointing, answer_len=args.answer_len,
                  split_backward=not args.no_split_backward, lora_r=args.lora_r)
    table, records = [], []
    for label, opts in rows:
        cells = []
        for n in gpus:
            if opts["optim_in_backward"] and n > 1:
                cells.append("-")
                continue
            e = estimate(shape, world_size=n, sharding="fsdp" if n > 1 else "none", **common, **opts)
            records.append({"row": label, "gpus": n, **e.as_dict()})
            mark = "" if args.device_gb is None or e.fits(args.device_gb) else " (no fit)"
            cells.append(f"{e.peak_gb:.2f}{mark}")
        table.append([label, *cells])
    if args.json:
        print(json.dumps({"model": str(args.model), "config_source": source, "estimates": records}, indent=1))
        return 0
    print(f"{args.model} ({source}): {shape.params() / 1e9:.2f} B parameters, {shape.layers} layers, hidden "
          f"{shape.hidden}, vocabulary {shape.vocab}")
    print(f"{args.method}, {args.dtype}, batch {args.batch_size} x {args.seq} tokens per device, checkpointing "
          f"{'on' if args.gradient_checkpointing else 'off'}; predicted peak GB per device (torch allocations; "
          "add the runtime, ~0.8 GB on a GPU):")
    header = ["run", *[f"{n} device{'s' if n > 1 else ''}" for n in gpus]]
    widths = [max(len(str(r[i])) for r in [header, *table]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths], *table]:
        print("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    if args.parts:
        print("\nparts, GB per device:")
        for rec in records:
            parts = ", ".join(f"{k} {v:.2f}" for k, v in rec["parts_gb"].items() if v)
            print(f"  {rec['row']}, {rec['gpus']} device(s): {parts}")
    return 0
