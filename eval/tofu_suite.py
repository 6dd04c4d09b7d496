"""TOFU evaluation suite: finetune a target (full) and a retain (retainXX) model, run several
unlearning methods on the target, evaluate every run (the retain model's evaluation is the
reference for forget quality and privleak) and build one Markdown/HTML report.

    python eval/tofu_suite.py --output runs/suite                      # tiny model, synthetic data
    python eval/tofu_suite.py --model smollm2 --data shared/data/tofu --methods grad_diff,npo \
        --max-items 100 --output runs/suite_smollm2
    python eval/tofu_suite.py --target runs/target --retain runs/retain --output runs/suite  # reuse

Layout written (each run directory as `llm-unlearn report` reads it)::

    OUT/data/                       synthetic splits (when --data is not given)
    OUT/runs/<name>/run.json        manifest (+ role, run_time_s)
    OUT/runs/<name>/eval/           summary.json, per_item.json
    OUT/report/                     report.md, report.html, *.png
    OUT/suite.json                  what ran, how long, which runs failed (and why)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from llm_unlearn.outputs import staged_dir  # noqa: E402
from llm_unlearn.runinfo import read_manifest  # noqa: E402


def _update_manifest(run_dir: Path, **fields) -> None:
    path = run_dir / "run.json"
    manifest = read_manifest(run_dir)
    manifest.update(fields)
    path.write_text(json.dumps(manifest, indent=2, default=str) + "\n")


def _finetune(args, split: str, out: Path) -> None:
    from llm_unlearn.finetune import FinetuneConfig, finetune

    tiny = args.model == "tiny"
    cfg = FinetuneConfig(model=args.model, data=str(args.data), split=split, output=str(out),
                         epochs=args.finetune_epochs or (15.0 if tiny else 5.0), lr=3e-3 if tiny else 1e-5,
                         batch_size=16 if tiny else 8, seed=args.seed, protocol=args.protocol)
    finetune(cfg)


def unlearn_overrides(args) -> dict:
    """The config fields of every unlearning run: the suite's defaults (tiny: learning rate 1e-3),
    then the user's ``--lr`` and ``--set FIELD=VALUE``, which win."""
    import yaml

    overrides = {"num_train_epochs": args.epochs, "protocol": args.protocol}
    if args.model == "tiny":
        overrides["learning_rate"] = 1e-3
    if args.lr is not None:
        overrides["learning_rate"] = args.lr
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"error: --set expects FIELD=VALUE, got '{item}'")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def apply_unlearn_args(args) -> None:
    """Fold ``--unlearn-args "--lr 5e-4 --set beta=0.2 ..."`` into ``args`` (its values win), so
    the user's unlearning settings reach every run; an unknown flag is a one-line error."""
    if not getattr(args, "unlearn_args", None):
        return
    import shlex

    p = argparse.ArgumentParser(prog="--unlearn-args", add_help=False, exit_on_error=False)
    p.add_argument("--lr", type=float)
    p.add_argument("--epochs", type=float)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--beta", type=float)
    p.add_argument("--alpha", type=float)
    p.add_argument("--set", action="append", default=[])
    try:
        given, unknown = p.parse_known_args(shlex.split(args.unlearn_args))
    except (argparse.ArgumentError, ValueError) as exc:
        raise SystemExit(f"error: --unlearn-args: {exc}") from None
    if unknown:
        raise SystemExit(f"error: --unlearn-args: unsupported {' '.join(unknown)} "
                         "(supported: --lr, --epochs, --max-steps, --beta, --alpha, --set FIELD=VALUE)")
    if given.lr is not None:
        args.lr = given.lr
    if given.epochs is not None:
        args.epochs = given.epochs
    extra = [f"{k}={v}" for k, v in (("max_steps", given.max_steps), ("beta", given.beta), ("alpha", given.alpha))
             if v is not None]
    args.set = list(args.set) + extra + given.set


def _unlearn(args, method: str, target: Path, out: Path) -> None:
    from llm_unlearn.unlearn import run_unlearning

    overrides = unlearn_overrides(args)
    _, result = run_unlearning(model=str(target), data=str(args.data), output=out, method=method,
                               forget_split=args.forget_split, overrides=overrides, overwrite=True)
    nll = result["nll"]
    print(f"{method}: forget NLL {nll['forget_before']:.3f} -> {nll['forget_after']:.3f}, "
          f"retain NLL {nll['retain_before']:.3f} -> {nll['retain_after']:.3f} ({result['steps']} steps)")


def _evaluate(args, run_dir: Path, retain_eval: Path | None) -> None:
    from llm_unlearn.eval import load_for_eval
    from llm_unlearn.eval.evaluator import evaluate_model, write_eval
    from llm_unlearn.eval.logs import compute_summary, read_logs

    model, tok = load_for_eval(str(run_dir))
    result = evaluate_model(model, tok, str(args.data), forget_split=args.forget_split, retain_logs=retain_eval,
                            max_items=args.max_items, batch_size=args.batch_size,
                            max_new_tokens=args.max_new_tokens, model_name=run_dir.name, protocol=args.protocol)
    write_eval(run_dir / "eval", result)
    if retain_eval is None:  # the retain model is its own reference (forget quality 1 by construction)
        logs = read_logs(run_dir / "eval")
        result["summary"].update(compute_summary(logs, logs))
        result["summary"].pop("logs", None)
        write_eval(run_dir / "eval", result)


def _timed(record: dict, name: str, fn, *a) -> bool:
    t0 = time.time()
    try:
        fn(*a)
        record[name] = {"ok": True, "seconds": round(time.time() - t0, 2)}
        return True
    except Exception as exc:  # keep going: the report shows the failed run as n/a
        traceback.print_exc()
        record[name] = {"ok": False, "seconds": round(time.time() - t0, 2), "error": f"{type(exc).__name__}: {exc}"}
        return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, help="suite output directory")
    p.add_argument("--model", default="tiny", help="base model to finetune (tiny, smollm2, a directory, a Hub id)")
    p.add_argument("--data", default=None, help="TOFU-schema directory (default: synthesise 10 authors x 10 QA)")
    p.add_argument("--forget-split", default="forget10")
    p.add_argument("--methods", default="grad_ascent,grad_diff,npo", help="comma-separated unlearning methods")
    p.add_argument("--epochs", type=float, default=5.0, help="unlearning epochs over the forget set (default 5)")
    p.add_argument("--lr", type=float, default=None,
                   help="unlearning learning rate (default: the method's; 1e-3 for the tiny model)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="set a field of the methods' configs (value parsed as YAML), e.g. --set alpha=1.0")
    p.add_argument("--unlearn-args", default=None, metavar="'FLAGS'",
                   help="unlearning flags as one string, as `llm-unlearn unlearn` spells them: --lr, --epochs, "
                        "--max-steps, --beta, --alpha, --set FIELD=VALUE (they win over --lr / --epochs / --set)")
    p.add_argument("--target", default=None, help="reuse this finetuned target run directory")
    p.add_argument("--retain", default=None, help="reuse this finetuned retain run directory")
    p.add_argument("--finetune-epochs", type=float, default=None)
    p.add_argument("--max-items", type=int, default=None, help="evaluate at most N items per split")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: the protocol's (200)")
    p.add_argument("--protocol", default="native", choices=["native", "open-unlearning", "tofu-legacy"],
                   help="prompt / tokenisation / evaluation protocol of every step (llm_unlearn.data.protocol)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    apply_unlearn_args(args)

    with staged_dir(args.output, args.overwrite, [args.data, args.target, args.retain]) as stage:
        rc = _run_suite(args, stage.path)
    print(f"report: {stage.final / 'report' / 'report.html'}")
    return rc


def _run_suite(args, out: Path) -> int:
    from llm_unlearn.data.tofu import matching_retain_split
    from llm_unlearn.eval.report import build_report

    if args.data is None:
        from llm_unlearn.data.synthetic import generate, write_splits

        args.data = write_splits(generate(10, 10, seed=args.seed), out / "data")
    runs = out / "runs"
    runs.mkdir()
    steps: dict = {}
    record = {"args": {k: str(v) for k, v in vars(args).items()}, "steps": steps}

    def finetuned(name: str, given: str | None, split: str) -> Path:
        run = runs / name
        if given:
            shutil.copytree(given, run)
            _update_manifest(run, role=name)
        elif _timed(steps, f"finetune {name}", _finetune, args, split, run):
            _update_manifest(run, role=name, run_time_s=steps[f"finetune {name}"]["seconds"])
        return run

    target = finetuned("target", args.target, "full")
    retain = finetuned("retain", args.retain, matching_retain_split(args.forget_split))
    unlearned = []
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        run = runs / method
        ok = _timed(steps, f"unlearn {method}", _unlearn, args, method, target, run)
        run.mkdir(exist_ok=True)
        _update_manifest(run, role="unlearned", method=method, run_time_s=steps[f"unlearn {method}"]["seconds"],
                         **({} if ok else {"error": steps[f"unlearn {method}"]["error"]}))
        unlearned.append((run, ok))

    retain_eval = retain / "eval" if _timed(steps, "eval retain", _evaluate, args, retain, None) else None
    _timed(steps, "eval target", _evaluate, args, target, retain_eval)
    for run, ok in unlearned:
        if ok:
            _timed(steps, f"eval {run.name}", _evaluate, args, run, retain_eval)
    build_report([retain, target] + [r for r, _ in unlearned], out / "report",
                 title=f"TOFU suite: {args.model} on {Path(str(args.data)).name} ({args.forget_split})")
    (out / "suite.json").write_text(json.dumps(record, indent=2) + "\n")
    failed = [k for k, v in steps.items() if not v["ok"]]
    if failed:
        print(f"failed steps: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
