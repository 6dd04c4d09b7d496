"""`llm-unlearn s3t train|delete|status|retrain|purge|verify`: S3T exact deletion as a service."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

from llm_unlearn.cli.common import add_overwrite_flag


def register(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text)
    ssub = p.add_subparsers(dest="s3t_command", metavar="ACTION", required=True)

    t = ssub.add_parser("train", help="plan shards/slices/sequences and train every LoRA stage")
    t.add_argument("--model", default="tiny", help="tiny, smollm2, a directory or a Hub id")
    t.add_argument("--data", required=True, help="local directory or Hub dataset name (locuslab/TOFU)")
    t.add_argument("--split", default="full", help="split whose items are trained and can be deleted")
    t.add_argument("--output", required=True, help="run directory (ledger, plan, checkpoints)")
    t.add_argument("--shards", type=int, default=2, help="m: disjoint shards")
    t.add_argument("--slices", type=int, default=4, help="L: slices per shard (= layer blocks = stages)")
    t.add_argument("--sequences", type=int, default=2, help="B: slice orders per shard (B <= L)")
    t.add_argument("--method", default="cyclic", choices=["cyclic", "bipartite"], help="sequence selection")
    t.add_argument("--lora-r", type=int, default=8)
    t.add_argument("--lora-alpha", type=int, default=16)
    t.add_argument("--epochs-per-stage", type=float, default=2.0, help="epochs over π1..πi at stage i")
    t.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-3; 1e-2 for tiny)")
    t.add_argument("--lr-schedule", default="constant", choices=["constant", "linear"],
                   help="learning rate within each stage: constant, or linear (decays from --lr to 0 over the "
                        "stage's steps; depends only on the stage's sample count, so deletion stays exact)")
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--max-length", type=int, default=256)
    t.add_argument("--max-items", type=int, default=None, help="only the first N items of the split")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--aggregate", default=None,
                   help="how served shards are combined (recorded in the run; eval --aggregate overrides; default "
                        "mixture): "
                        "mean-logprob (product of experts), mixture (mean probability), posterior (shards weighted "
                        "by the likelihood they give the prompt), route (top-1 shard by that likelihood)")
    t.add_argument("--with-utility", action="store_true",
                   help="every stage also trains on the utility sets (never deleted), as a tiny single model is finetuned")
    t.add_argument("--prompt-loss", action="store_true",
                   help="train on the question tokens too (a shard's prompt likelihood then identifies its entities)")
    t.add_argument("--layout", default="blocks", choices=["blocks", "stacked"],
                   help="what stage i trains: blocks (the paper: the LoRA of layer block i) or stacked (its own "
                        "rank-r slice of one rank r*L LoRA on every layer: more capacity, the same exactness)")
    t.add_argument("--head", default=None, choices=["none", "lora"],
                   help="output head: none (frozen, as in the paper) or lora (a LoRA of the head too, each stage its "
                        "own rank-r components: deletion stays exact). Default: lora for --model tiny, whose random "
                        "head caps what its adapters learn; none for a pretrained model")
    t.add_argument("--exclude-split", default=None,
                   help="exact-retrain reference: leave out the samples of this split (e.g. forget10), same plan and seeds")
    t.add_argument("--exclude-ids", nargs="+", default=[], metavar="ID",
                   help="exact-retrain reference: leave out these sample ids, same plan and seeds")
    add_overwrite_flag(t)
    t.set_defaults(func=run_train)

    d = ssub.add_parser("delete", help="delete samples: switch off every stage that saw them (one transaction)")
    d.add_argument("run", help="S3T run directory")
    what = d.add_mutually_exclusive_group(required=True)
    what.add_argument("--ids", nargs="+", help="sample ids (as in the ledger, e.g. full:12)")
    what.add_argument("--match", help="delete every sample whose question or answer contains this text")
    d.add_argument("--json", action="store_true", help="print the result as JSON")
    d.set_defaults(func=run_delete)

    s = ssub.add_parser("status", help="per shard: served prefix, deleted count, deletion capacity")
    s.add_argument("run", help="S3T run directory")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=run_status)

    r = ssub.add_parser("retrain", help="retrain only the shards with no surviving sequence")
    r.add_argument("run", help="S3T run directory")
    r.add_argument("--shards", type=int, nargs="+", default=None, help="only these pending shards")
    r.set_defaults(func=run_retrain)

    g = ssub.add_parser("purge", help="remove every checkpoint that saw a deleted sample and the deleted text "
                                      "(also run by retrain)")
    g.add_argument("run", help="S3T run directory")
    g.set_defaults(func=run_purge)

    v = ssub.add_parser("verify", help="check that the served adapters are exact (ledger, hashes, optional retrain)")
    v.add_argument("run", help="S3T run directory")
    v.add_argument("--reproduce", action="store_true", help="retrain each served prefix and compare bit for bit")
    v.set_defaults(func=run_verify)


def run_train(args: argparse.Namespace) -> int:
    from llm_unlearn.data.source import check_split
    from llm_unlearn.outputs import check_output, staged_dir

    inputs = [args.data, None if args.model == "tiny" else args.model]
    check_split(args.split, args.data)  # validate before creating anything (and before torch)
    check_output(args.output, args.overwrite, inputs)
    from llm_unlearn.s3t.train import S3TConfig, default_head, train_s3t, validate_config


    cfg = S3TConfig(
        model=args.model, data=args.data, split=args.split, output=args.output, shards=args.shards,
        slices=args.slices, sequences=args.sequences, method=args.method, lora_r=args.lora_r,
        lora_alpha=args.lora_alpha, epochs_per_stage=args.epochs_per_stage,
        lr=args.lr if args.lr is not None else (1e-2 if args.model == "tiny" else 1e-3),
        batch_size=args.batch_size, max_length=args.max_length, max_items=args.max_items, seed=args.seed,
        prompt_loss=args.prompt_loss, with_utility=args.with_utility, layout=args.layout,
        head=args.head or default_head(args.model),
        lr_schedule=args.lr_schedule, **({"aggregate": args.aggregate} if args.aggregate else {}), exclude_ids=list(args.exclude_ids), exclude_split=args.exclude_split,
    )
    validate_config(cfg)  # before creating anything
    with staged_dir(args.output, args.overwrite, inputs) as stage:
        train_s3t(replace(cfg, output=str(stage.path)))
    out = stage.final
    print(f"trained S3T run in {out}")
    _print_status(out)
    return 0


def run_delete(args: argparse.Namespace) -> int:
    from llm_unlearn.s3t.service import delete_samples

    res = delete_samples(args.run, ids=args.ids, match=args.match)
    if args.json:
        print(json.dumps(res.__dict__, default=str))
        return 0
    if res.status == "already_deleted":
        print(f"nothing to do: {len(res.already_deleted)} sample(s) already deleted")
        return 0
    print(f"request {res.request_id}: deleted {len(res.sample_ids)} sample(s)"
          + (f" ({len(res.already_deleted)} already deleted)" if res.already_deleted else ""))
    for shard, (sequence, prefix) in sorted(res.serving.items()):
        state = f"serving sequence {sequence} prefix {prefix}" if prefix else "NEEDS RETRAIN (not serving)"
        print(f"  shard {shard}: {state}")
    if res.retrain_shards:
        print(f"run: llm-unlearn s3t retrain {args.run}")
    return 0


def _print_status(run) -> None:
    from llm_unlearn.s3t.service import run_status

    print(f"{'shard':>5} {'status':>13} {'seq':>4} {'prefix':>7} {'samples':>8} {'deleted':>8} {'live seq':>9} {'capacity':>9}")
    for s in run_status(run):
        seq = "-" if s.sequence is None else str(s.sequence)
        print(f"{s.shard:>5} {s.status:>13} {seq:>4} {f'{s.prefix}/{s.num_slices}':>7} {s.samples:>8} "
              f"{s.deleted:>8} {s.live_sequences:>9} {s.capacity:>9}")


def run_status(args: argparse.Namespace) -> int:
    from llm_unlearn.s3t.service import run_status as status

    if args.json:
        print(json.dumps([s.__dict__ for s in status(args.run)], indent=1))
        return 0
    _print_status(args.run)
    print("capacity = fewest further deletions that can force a shard to retrain")
    return 0


def run_retrain(args: argparse.Namespace) -> int:
    from llm_unlearn.s3t.service import retrain

    done = retrain(args.run, args.shards)
    print(f"retrained shards {done}" if done else "no shard needs retraining")
    print("purged the checkpoints and ledger text of deleted samples")
    _print_status(args.run)
    return 0


def run_purge(args: argparse.Namespace) -> int:
    from llm_unlearn.s3t.service import purge

    res = purge(args.run)
    print(f"purged: {res['stages_dropped']} stage record(s), {len(res['checkpoints_removed'])} checkpoint path(s), "
          f"{res['texts_removed']} deleted text(s) from the ledger, {len(res['files_removed'])} file(s) quoting them")
    for rel in res["files_removed"]:
        print(f"  removed {rel} (quoted deleted text)")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from llm_unlearn.s3t.service import verify_run

    report = verify_run(args.run, reproduce=args.reproduce)
    for e in report["served"]:
        extra = ", reproduced bit for bit" if e.get("reproduced") else ""
        print(f"shard {e['shard']}: sequence {e['sequence']} prefix {e['prefix']} ok (sha256 {e['sha256'][:12]}{extra})")
    print(f"exact: no served stage saw any of the {report['deleted_samples']} deleted sample(s), and no checkpoint "
          "or text of them is left"
          + (f"; shards {report['pending_retrain']} await retraining" if report["pending_retrain"] else ""))
    return 0
