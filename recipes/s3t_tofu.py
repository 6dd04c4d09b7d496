"""S3T exact deletion on TOFU (Chowdhury et al., 2024, Sec. 3): train m shards × B slice orders ×
L LoRA stages over a base model, optionally delete samples (every checkpoint that saw them stops
being served), purge what they left behind, then evaluate the served shard ensemble (`llm_unlearn.s3t.load_s3t_model`,
combined by `--aggregate`) into OUTPUT/eval. One process: stages train one after another (the run is a ledger-backed service,
see `llm-unlearn s3t`).

    python recipes/s3t_tofu.py --config recipes/configs/s3t_tofu.yaml
    python recipes/s3t_tofu.py --config recipes/configs/s3t_tofu.yaml --delete_split forget10   # train, then forget
    python recipes/s3t_tofu.py --config recipes/configs/s3t_tofu.yaml \
        --model_name_or_path tiny --data data/synth --output_dir runs/tiny-s3t --lr 1e-2 --delete_match "Basil"
"""

from __future__ import annotations

import sys
from dataclasses import MISSING, dataclass, field, fields, make_dataclass

from _common import EvalArguments, UnlearnError, run_evaluation

from llm_unlearn.s3t import S3TConfig

# Recipe-wide names for the library's fields (every recipe takes --model_name_or_path / --output_dir).
RENAMED = {"model": "model_name_or_path", "output": "output_dir"}


@dataclass
class DeletionArguments:
    delete_ids: list[str] | None = field(default=None, metadata={"help": "after training, delete these sample ids (e.g. full:12)"})
    delete_match: str | None = field(default=None, metadata={"help": "after training, delete every sample whose question or answer contains this text"})
    delete_split: str | None = field(default=None, metadata={"help": "after training, delete every trained sample that is in this split (e.g. forget10)"})
    retrain: bool = field(default=True, metadata={"help": "retrain the shards a deletion left without any exact prefix"})
    overwrite_output: bool = field(default=False, metadata={"help": "replace a non-empty output_dir"})


def _arguments():
    renamed = [(RENAMED.get(f.name, f.name), f.type,
                field(default=f.default, metadata=f.metadata) if f.default is not MISSING
                else field(default_factory=f.default_factory, metadata=f.metadata))
               for f in fields(S3TConfig)]
    return make_dataclass("S3TArguments", renamed), DeletionArguments, EvalArguments


def ids_in_split(run_dir, split: str, data: str) -> list[str]:
    """Ledger ids of the trained samples whose (question, answer) is an item of `split`."""
    from llm_unlearn.data.tofu import load_tofu
    from llm_unlearn.s3t.train import load_run

    wanted = {(r["question"], r["answer"]) for r in load_tofu(split, data)}
    ledger, *_ = load_run(run_dir)
    ids = [r["sample_id"] for r in ledger.samples(ledger.sample_ids(include_deleted=True))
           if (r["question"], r["answer"]) in wanted]
    if not ids:
        raise UnlearnError(f"delete_split {split}: none of its items was trained in this run")
    return ids


def main() -> int:
    from dataclasses import replace

    import torch
    from trl import TrlParser

    from llm_unlearn.data.tofu import load_tofu
    from llm_unlearn.s3t import delete_samples, load_s3t_model, purge, retrain, run_status, train_s3t
    from llm_unlearn.s3t.train import validate_config

    lib, deletion, ev = TrlParser(_arguments()).parse_args_and_config()
    inverse = {v: k for k, v in RENAMED.items()}
    cfg = S3TConfig(**{inverse.get(k, k): v for k, v in vars(lib).items()})
    try:
        validate_config(cfg)  # a wrong split, source or exclusion fails before the output exists
        if deletion.delete_split:
            load_tofu(deletion.delete_split, cfg.data)
        from llm_unlearn.outputs import staged_dir

        with staged_dir(cfg.output, deletion.overwrite_output,
                        [cfg.data, None if cfg.model == "tiny" else cfg.model]) as stage:
            out = train_s3t(replace(cfg, output=str(stage.path)))
            ids = list(deletion.delete_ids or [])
            if deletion.delete_split:
                ids += ids_in_split(out, deletion.delete_split, cfg.data)
            if ids or deletion.delete_match:
                res = delete_samples(out, ids=ids, match=deletion.delete_match)
                print(f"deleted {len(res.sample_ids)} sample(s); shards affected {res.affected_shards}, "
                      f"to retrain {res.retrain_shards}")
                if res.retrain_shards and deletion.retrain:
                    retrain(out)  # and purge
                else:
                    purge(out)  # the checkpoints that saw the deleted samples, and their text in the ledger
            if ev.run_eval:
                ensemble = load_s3t_model(out, dtype=cfg.dtype)
                with torch.no_grad():
                    run_evaluation(ensemble, ensemble.tokenizer, cfg.data, out, ev)
                del ensemble
        out = stage.final
        for s in run_status(out):
            print(f"shard {s.shard}: {s.status}, prefix {s.prefix}/{s.num_slices}, {s.deleted}/{s.samples} deleted")
    except UnlearnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"saved S3T run to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
