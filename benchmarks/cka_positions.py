"""Which token positions make layer-wise CKA informative: answer tokens vs every token, on the
SmolLM2 TOFU frontier's models (not a test; writes ``benchmarks/results/cka_positions.json``).

For the frontier's target, retain and the given unlearned runs (run directories under the
frontier's ``runs_*`` cache), the mean over layers of linear CKA on the 40 forget items, at the
answer tokens (`llm-unlearn attack --cka-positions answer`, the default) and at every token
(``all``), and the representation shift (1 - CKA(run, target)) / (1 - CKA(retain, target)).

    python benchmarks/cka_positions.py --runs-dir ~/.cache/llm_unlearn/frontier/runs_<key> \\
        --runs npo_rt_none_lora graddiff_none_lora
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine_info  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs-dir", required=True, help="the frontier's runs_<key> directory (target/retain beside it)")
    p.add_argument("--runs", nargs="+", required=True, help="unlearned run directories inside --runs-dir")
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--out", default=str(RESULTS / "cka_positions.json"))
    args = p.parse_args(argv)
    import numpy as np
    import torch

    from llm_unlearn.data.tofu import load_tofu
    from llm_unlearn.eval.attacks import cka_shift, hidden_representations, layer_cka, merged_model
    from llm_unlearn.unlearn import load_target

    torch.set_num_threads(1)
    runs_dir = Path(args.runs_dir)
    rows = load_tofu("forget10_perturbed", runs_dir.parent / "data_20authors").to_list()
    models = {"target": next(runs_dir.parent.glob("target_*")), "retain": next(runs_dir.parent.glob("retain_*")),
              **{r: runs_dir / r for r in args.runs}}
    t0 = time.time()
    result: dict = {"benchmark": "cka_positions", "machine": machine_info(), "command": " ".join(
        ["python", "benchmarks/cka_positions.py", *(argv if argv is not None else sys.argv[1:])]),
        "settings": {"items": len(rows), "max_tokens": args.max_tokens, "models": {k: str(v) for k, v in models.items()}},
        "positions": {}, "targets": []}
    for positions in ("answer", "all"):
        reps = {}
        for name, d in models.items():
            model, tok = load_target(str(d))
            reps[name] = hidden_representations(merged_model(model), tok, rows, args.max_tokens, 0, 8, positions)
            del model
        res = {"target_vs_retain": float(np.nanmean(layer_cka(reps["target"], reps["retain"])))}
        for r in args.runs:
            u = float(np.nanmean(layer_cka(reps[r], reps["target"])))
            res[f"{r}_vs_target"] = u
            res[f"{r}_shift"] = cka_shift({"unlearned_vs_target": {"mean": u},
                                           "target_vs_retain": {"mean": res["target_vs_retain"]}})
        result["positions"][positions] = res
        print(positions, json.dumps(res), flush=True)
    result["total_s"] = round(time.time() - t0, 1)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
