"""Output directories (`llm_unlearn.outputs`) and pre-work checks (`llm_unlearn.checks`)."""

from __future__ import annotations

import json
import struct

import pytest

from llm_unlearn.checks import check_fraction, check_safetensors, is_valid_hub_id, looks_like_path
from llm_unlearn.errors import UnlearnError
from llm_unlearn.outputs import check_output, staged_dir, staged_file, staging_path


def _tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_output_that_is_contains_or_holds_an_input_is_refused(tmp_path):
    model = tmp_path / "runs" / "target"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    with pytest.raises(UnlearnError, match="is also an input"):
        check_output(model, True, [model])
    with pytest.raises(UnlearnError, match="contains the input"):
        check_output(tmp_path / "runs", True, [model])
    (model / "base").mkdir()
    (model / "base" / "model.safetensors").write_bytes(b"x")
    with pytest.raises(UnlearnError, match="lies inside the input .* holds its files"):
        check_output(model / "base", True, [model])
    # an eval directory inside the model's run directory is the documented layout
    (model / "eval").mkdir()
    (model / "eval" / "summary.json").write_text("{}")
    assert check_output(model / "eval", True, [model]) == model / "eval"
    with pytest.raises(UnlearnError, match="already exists; pass --overwrite"):
        check_output(model / "eval", False, [model])
    # Hub ids, aliases and missing paths are not local inputs
    assert check_output(tmp_path / "new", False, ["org/name", "smollm2", None, tmp_path / "nope"])


def test_staged_dir_replaces_only_on_success_and_names_the_final_place(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), staged_dir(out, True) as stage:
        (stage.path / "new.txt").write_text("half")
        raise RuntimeError("crash")
    assert _tree(out) == {"old.txt": b"old"} and not staging_path(out).exists()

    with staged_dir(out, True) as stage:
        assert stage.path == tmp_path / ".out.partial" and not (stage.path / "old.txt").exists()
        (stage.path / "run.json").write_text(json.dumps({"data": str(stage.path / "data"),
                                                         "rel": ".out.partial/data"}))
    assert sorted(_tree(out)) == ["run.json"] and not staging_path(out).exists()
    run = json.loads((out / "run.json").read_text())
    assert run == {"data": str(out / "data"), "rel": "out/data"}
    assert not list(tmp_path.glob(".out.old-*"))


def test_a_failed_run_with_a_checkpoint_keeps_its_staging_for_resume(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt), staged_dir(out, False) as stage:
        (stage.path / "checkpoint-3").mkdir()
        raise KeyboardInterrupt
    assert not out.exists() and (staging_path(out) / "checkpoint-3").is_dir()
    with staged_dir(out, False, resume=True) as stage:  # resume reuses it
        assert (stage.path / "checkpoint-3").is_dir()
    assert (out / "checkpoint-3").is_dir()


def test_staged_file_keeps_the_old_file_on_failure(tmp_path):
    f = tmp_path / "mask.safetensors"
    f.write_text("old")
    with pytest.raises(ValueError), staged_file(f, True) as tmp:
        assert tmp.suffix == ".safetensors" and tmp != f
        tmp.write_text("half")
        raise ValueError
    assert f.read_text() == "old"
    with staged_file(f, True) as tmp:
        tmp.write_text("new")
    assert f.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["mask.safetensors"]
    with pytest.raises(UnlearnError, match="is also an input"):
        check_output(f, True, [f])


@pytest.mark.parametrize("spec, path", [
    ("./runs/x", True), ("/abs/x", True), ("~/x", True), ("a/b/c", True), ("model.gguf", True),
    ("org/name", False), ("gpt2", False),
])
def test_looks_like_path(spec, path):
    assert looks_like_path(spec) is path


def test_an_existing_parent_directory_makes_a_spec_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not looks_like_path("runs/targte")
    (tmp_path / "runs").mkdir()
    assert looks_like_path("runs/targte")


@pytest.mark.parametrize("spec, ok", [
    ("HuggingFaceTB/SmolLM2-135M-Instruct", True), ("gpt2", True), ("a/b/c", False), ("bad--id/x", False),
    ("org/name.", False), ("with space/x", False), ("", False),
])
def test_hub_ids(spec, ok):
    assert is_valid_hub_id(spec) is ok


def test_truncated_safetensors_is_caught_from_its_header(tmp_path):
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    good = struct.pack("<Q", len(header)) + header + bytes(16)
    f = tmp_path / "model.safetensors"
    f.write_bytes(good)
    check_safetensors(f)
    f.write_bytes(good[:-5])
    with pytest.raises(UnlearnError, match="truncated or corrupt safetensors"):
        check_safetensors(f)
    f.write_bytes(good[:20])
    with pytest.raises(UnlearnError, match="truncated or corrupt safetensors"):
        check_safetensors(f)


@pytest.mark.parametrize("value, ok", [(0.5, True), (1.0, True), (1.5, False), (0.0, False), (-0.1, False),
                                       (float("nan"), False)])
def test_fractions(value, ok):
    if ok:
        check_fraction("--mask-ratio", value)
    else:
        with pytest.raises(UnlearnError, match="--mask-ratio must be in"):
            check_fraction("--mask-ratio", value)
