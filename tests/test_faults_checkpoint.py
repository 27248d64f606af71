"""Checkpoint faults (issue 18): a shard missing from an indexed folder, a PEFT adapter folder given without its
base model, and a ``describe`` target whose script calls ``sys.exit`` on import.  Each is a clear error naming the
file, from the Python API and from the CLI (one line, exit status 2), in streaming and whole-file modes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from wwmonitor import analyze_model
from wwmonitor.checkpoint import load_weights, open_weights
from wwmonitor.cli import main
from wwmonitor.describe import describe

RNG = np.random.default_rng(0)


def _w(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _sharded(folder: Path, drop: str | None = None) -> Path:
    """A two-shard folder with its index; ``drop``: a shard file removed afterwards."""
    folder.mkdir()
    shards = {
        "model-00001-of-00002.safetensors": {"a.weight": _w(64, 32), "a.bias": _w(64)},
        "model-00002-of-00002.safetensors": {"b.weight": _w(48, 32)},
    }
    wmap = {}
    for name, tensors in shards.items():
        save_file(tensors, str(folder / name))
        wmap.update({k: name for k in tensors})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wmap}))
    if drop:
        (folder / drop).unlink()
    return folder


MISSING = "model-00002-of-00002.safetensors"


def test_complete_indexed_folder_still_loads(tmp_path):
    folder = _sharded(tmp_path / "ok")
    assert sorted(load_weights(folder)) == ["a.bias", "a.weight", "b.weight"]
    assert sorted(open_weights(folder)) == ["a.bias", "a.weight", "b.weight"]


@pytest.mark.parametrize("reader", [load_weights, open_weights, describe, analyze_model])
def test_missing_shard_is_an_error_naming_it(tmp_path, reader):
    folder = _sharded(tmp_path / "m", drop=MISSING)
    with pytest.raises(ValueError, match=rf"{MISSING} \(1 tensor\)") as ei:
        reader(folder)
    assert "model.safetensors.index.json" in str(ei.value) and "missing" in str(ei.value)


def test_missing_shard_analysed_whole_file_mode(tmp_path):
    """The whole-file route (a mapping loaded first) refuses it too: the error comes from the loader."""
    folder = _sharded(tmp_path / "m", drop=MISSING)
    with pytest.raises(ValueError, match=MISSING):
        analyze_model(load_weights(folder))


def test_index_naming_a_tensor_in_no_shard_is_an_error(tmp_path):
    folder = _sharded(tmp_path / "t")
    idx = folder / "model.safetensors.index.json"
    doc = json.loads(idx.read_text())
    doc["weight_map"]["c.weight"] = MISSING  # the index says c.weight is there; no shard holds it
    idx.write_text(json.dumps(doc))
    for reader in (load_weights, open_weights):
        with pytest.raises(ValueError, match=r"c\.weight \(in model-00002"):
            reader(folder)


@pytest.mark.parametrize("command", ["describe", "analyze"])
def test_cli_missing_shard_exit_2_one_line(tmp_path, capsys, command):
    folder = _sharded(tmp_path / "m", drop=MISSING)
    extra = ["--no-progress"] if command == "analyze" else []
    assert main([command, str(folder), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and MISSING in err[0] and "Traceback" not in err[0]


def _adapter(folder: Path) -> Path:
    folder.mkdir()
    (folder / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "base_model_name_or_path": "gpt2"})
    )
    save_file(
        {
            "base_model.model.h.0.attn.c_attn.lora_A.weight": _w(4, 768),
            "base_model.model.h.0.attn.c_attn.lora_B.weight": _w(2304, 4),
        },
        str(folder / "adapter_model.safetensors"),
    )
    return folder


@pytest.mark.parametrize("reader", [load_weights, open_weights, describe, analyze_model])
def test_adapter_folder_is_refused_asking_for_the_base(tmp_path, reader):
    folder = _adapter(tmp_path / "adapter")
    for target in (folder, folder / "adapter_model.safetensors"):
        with pytest.raises(ValueError, match="PEFT adapter for base model 'gpt2'") as ei:
            reader(target)
        assert "PeftModel.from_pretrained" in str(ei.value) and "merge_and_unload" in str(ei.value)


@pytest.mark.parametrize("command", ["describe", "analyze"])
def test_cli_adapter_folder_exit_2(tmp_path, capsys, command):
    folder = _adapter(tmp_path / "adapter")
    extra = ["--no-progress"] if command == "analyze" else []
    assert main([command, str(folder), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "PEFT adapter" in err[0]


@pytest.mark.parametrize(
    "body, target",
    [
        ("import sys\nsys.exit(0)\nmodel = None\n", "ww_exit_on_import:model"),
        ("import sys\ndef make():\n    sys.exit(3)\n", "ww_exit_in_factory:make()"),
    ],
)
def test_describe_script_calling_sys_exit_is_an_error(tmp_path, monkeypatch, capsys, body, target):
    modname = target.split(":")[0]
    script = tmp_path / f"{modname}.py"
    script.write_text(body)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert main(["describe", target]) == 2
    finally:
        sys.modules.pop(modname, None)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sys.exit" in err[0] and str(script) in err[0]


def test_unreadable_index_is_an_error_naming_it(tmp_path):
    folder = _sharded(tmp_path / "bad")
    (folder / "model.safetensors.index.json").write_text('{"weight_map": ')
    for reader in (load_weights, open_weights):
        with pytest.raises(ValueError, match=r"model\.safetensors\.index\.json: not a valid shard index"):
            reader(folder)


def test_sharded_bin_folder_is_refused_naming_what_to_use(tmp_path):
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {"a": "pytorch_model-1.bin"}}))
    with pytest.raises(ValueError, match=r"sharded pytorch_model-\*\.bin checkpoints are not supported.*safetensors"):
        load_weights(folder)
