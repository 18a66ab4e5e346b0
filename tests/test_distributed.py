"""`lerplm train` under two CPU processes (torchrun + gloo, as `accelerate launch --multi_gpu` does on GPUs)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .conftest import STYLES
from .test_train import write_config

pytestmark = pytest.mark.skipif(
    not STYLES.is_dir() or shutil.which("torchrun") is None, reason="needs shared data and torchrun"
)


def run_train(config: Path, out: Path, seen: Path, nproc: int) -> None:
    seen.mkdir()
    env = {**os.environ, "LERPLM_SEEN_DIR": str(seen), "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    worker = str(Path(__file__).with_name("ddp_worker.py"))
    cmd = ["torchrun", "--standalone", f"--nproc_per_node={nproc}", worker] if nproc > 1 else [sys.executable, worker]
    r = subprocess.run(
        cmd + ["train", "--config", str(config), "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def test_two_process_training_equals_one_process_with_the_same_global_batch(tmp_path, base_dir):
    """Two ranks of batch 2 see different shards, and after the gradient all-reduce they take the step one
    process takes on the batch of 4 that joins them: the same weights. Without the all-reduce each rank would
    follow its own half."""
    single = write_config(tmp_path / "one", base_dir, dropout=0.0, max_examples=64, max_steps=3, batch_size=4)
    double = write_config(tmp_path / "two", base_dir, dropout=0.0, max_examples=64, max_steps=3, batch_size=2)
    run_train(single, tmp_path / "single", tmp_path / "seen1", 1)
    run_train(double, tmp_path / "ddp", tmp_path / "seen2", 2)

    for ep in ("sentiment.negative", "sentiment.positive"):
        one = load_file(tmp_path / "single" / ep / "adapter_model.safetensors")
        two = load_file(tmp_path / "ddp" / ep / "adapter_model.safetensors")
        assert one.keys() == two.keys()
        for k in one:
            torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-6)
    manifest = json.loads((tmp_path / "ddp" / "anchors.json").read_text())
    assert [e["adapter"] for a in manifest["attributes"] for e in a["endpoints"]] == [
        "sentiment.negative",
        "sentiment.positive",
    ]
    assert not list((tmp_path / "ddp").glob(".*"))  # no temp or work dirs left behind

    rank0 = json.loads((tmp_path / "seen2" / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "seen2" / "rank1.json").read_text())
    assert rank0 and rank1
    assert not set(rank0) & set(rank1)  # each process trained on its own shard
    seen1 = json.loads((tmp_path / "seen1" / "rank0.json").read_text())
    assert sorted(rank0 + rank1) == sorted(seen1)  # together, the blocks the single process saw
