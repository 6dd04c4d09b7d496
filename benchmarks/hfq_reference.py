"""The holdout forget quality of a model that never saw the forget nor the holdout authors: not a test;
writes ``benchmarks/results/hfq_reference.json``.

HFQ compares the forget items with holdout items about other authors. A model trained on neither
should treat them alike (HFQ near 1, membership AUCs near 0.5) only if the two author sets are
exchangeable; this measures how far from that the frontier's subset is, on the base model (before
any TOFU finetuning), so that HFQ values can be read against it.

    python benchmarks/hfq_reference.py --data /work/cache/frontier/data_20authors   # the frontier subset
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
    p.add_argument("--model", default="smollm2", help="a model trained on neither set (default: base SmolLM2)")
    p.add_argument("--data", required=True, help="a TOFU-layout source with forgetXX_perturbed and holdoutXX")
    p.add_argument("--forget-split", default="forget10")
    p.add_argument("--items", type=int, default=40)
    p.add_argument("--out", default=str(RESULTS / "hfq_reference.json"))
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from llm_unlearn.eval.evaluator import score_splits
    from llm_unlearn.unlearn import hfq_rows, load_target

    t0 = time.time()
    rows, why = hfq_rows(args.data, args.forget_split, args.items)
    if rows is None:
        p.error(why)
    model, tok = load_target(args.model)
    m = score_splits(model, tok, rows, batch_size=8)["metrics"]
    keys = ("holdout_forget_quality", "holdout_forget_quality_ks_statistic", "mia_auc_loss", "mia_auc_zlib",
            "mia_auc_min_k", "mia_auc_min_k_plus_plus")
    result = {"benchmark": "hfq_reference", "machine": machine_info(),
              "command": "python benchmarks/hfq_reference.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "model": args.model, "data": args.data, "items": {k: len(v) for k, v in rows.items()},
              "metrics": {k: m.get(k) for k in keys}, "time_s": round(time.time() - t0, 1)}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for k in keys:
        print(f"{k:36s} {m.get(k):.4g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
