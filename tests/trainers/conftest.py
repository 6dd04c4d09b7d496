"""Fixtures for the trainer tests: the tiny target model (finetuned on synthetic data, from
tests/conftest.py), its tokenised forget10 / retain90 splits, and `make_trainer`, the one way the
tests build a trainer."""

from __future__ import annotations

import statistics
from types import SimpleNamespace

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    # the tiny model (hidden 128) gains nothing from 2 threads; on a shared machine 1 is much faster
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def unlearn_data(target_dir, synthetic_dir):
    from llm_unlearn.data.qa import tokenize_qa_dataset
    from llm_unlearn.data.tofu import load_tofu
    from llm_unlearn.models import load_tokenizer

    tok = load_tokenizer(str(target_dir))
    forget, _ = tokenize_qa_dataset(load_tofu("forget10", synthetic_dir), tok, max_length=128)
    retain, _ = tokenize_qa_dataset(load_tofu("retain90", synthetic_dir), tok, max_length=128)
    return SimpleNamespace(tokenizer=tok, forget=forget, retain=retain, retain_eval=retain.select(range(30)))


@pytest.fixture()
def load_target(target_dir):
    from llm_unlearn.models import load_model

    def load(lora: bool = False):
        from llm_unlearn.models import attach_lora

        model = load_model(str(target_dir))
        return attach_lora(model, r=8, alpha=16, seed=0) if lora else model

    return load


@pytest.fixture()
def make_trainer(load_target, unlearn_data, tmp_path):
    """``make_trainer(method, lora=False, model=None, trainer_cls=None, **config_fields)``: a
    trainer on the target model with small-run defaults (high lr for the tiny model, no saving)."""
    from llm_unlearn.data.pairing import ForgetRetainDataset
    from llm_unlearn.trainers import METHODS

    def make(method: str, lora: bool = False, model=None, trainer_cls=None, **fields):
        trainer_default, config_cls = METHODS[method]
        trainer_cls = trainer_cls or trainer_default
        model = model if model is not None else load_target(lora=lora)
        args = {
            "output_dir": str(tmp_path / f"run_{method}"), "max_steps": 12, "per_device_train_batch_size": 4,
            "learning_rate": 1e-3, "warmup_steps": 0, "logging_steps": 4, "use_cpu": True, "disable_tqdm": True,
            "seed": 0, "report_to": "none",
        }
        args.update(fields)
        cfg = config_cls(**args)
        retain = unlearn_data.retain if trainer_cls.needs_retain(cfg) else None
        pairs = ForgetRetainDataset(unlearn_data.forget, retain, seed=0)
        return trainer_cls(model=model, args=cfg, train_dataset=pairs, processing_class=unlearn_data.tokenizer)

    return make


@pytest.fixture()
def mean_nll(unlearn_data):
    """Mean per-item answer NLL of a model on a tokenised dataset."""
    from llm_unlearn.trainers import per_item_nll

    def nll(model, dataset) -> float:
        return statistics.fmean(per_item_nll(model, dataset, unlearn_data.tokenizer))

    return nll


@pytest.fixture()
def snapshot():
    """Copies of a model's parameters by name."""

    def take(model) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in model.named_parameters()}

    return take
