"""Real DeepSpeed runs: two gloo ranks under torchrun, token shards streamed from the S3
server. Three launches cover ZeRO-2 (straight, 20 steps), ZeRO-3 (10 steps, checkpoint to
object storage) and its resume (10 more); one single-process launch covers divergence."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flows.cli import main as cli
from model.checkpoint import CheckpointLocation
from model.export import load_native_state
from model.llama import Llama, ModelConfig
from pipeline.storage import ObjectStore
from pipeline.tokenize import tokenize_dataset
from tests.model.conftest import SEQ_LEN

REPO = Path(__file__).resolve().parents[2]
STEP_KEYS = {"step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu", "tokens_seen", "time"}
LAUNCH_TIMEOUT_S = 180


def launch(args: list[str], *, ranks: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))
    if ranks > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks), "-m", "model.train", *args]
    else:
        cmd = [sys.executable, "-m", "model.train", *args]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.terminate()  # torchrun forwards SIGTERM to its workers
        out, _ = proc.communicate(timeout=30)
        pytest.fail(f"training launch timed out:\n{out[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def config(tmp: Path, token_dataset: dict, run: str, **extra) -> list[str]:
    path = tmp / f"{run}.yaml"
    path.write_text(
        f"run_dir: {tmp / run}\n"
        "model: {preset: tiny, n_layers: 2}\n"
        f"data: {{dataset: {token_dataset['dataset']}, version: {token_dataset['version']}}}\n"
        "train: {steps: 20, micro_batch_size: 4, grad_accum: 2, lr: 1.0e-3, warmup_steps: 4, precision: fp32}\n"
        "checkpoint: {every: 10}\n"
        "eval: {every: 10, batches: 2}\n"
    )
    return ["--config", str(path), *[f"--set={k}={v}" for k, v in extra.items()]]


def metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if "loss" in r], [r for r in lines if "val_loss" in r]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, token_dataset, model_bucket):
    tmp = tmp_path_factory.mktemp("train")
    ckpt_uri = f"{model_bucket}/checkpoints/resumed"
    straight = launch(config(tmp, token_dataset, "straight", deepspeed="ds_zero2.json"))
    assert straight.returncode == 0, straight.stdout[-4000:]
    resumed_args = config(tmp, token_dataset, "resumed", deepspeed="ds_zero3.json", **{"checkpoint.uri": ckpt_uri})
    first = launch([*resumed_args, "--set=train.stop_after=10"])
    assert first.returncode == 0, first.stdout[-4000:]
    first_half = metrics(tmp / "resumed")
    completed_after_first = (tmp / "resumed" / "COMPLETED.json").exists()
    latest_after_first = CheckpointLocation(ckpt_uri, tmp / "unused").latest_tag()
    second = launch([*resumed_args, "--resume"])
    assert second.returncode == 0, second.stdout[-4000:]
    return {"tmp": tmp, "ckpt_uri": ckpt_uri, "first_half": first_half, "completed_after_first": completed_after_first,
            "latest_after_first": latest_after_first}  # fmt: skip


def test_two_rank_run_follows_the_run_directory_contract(runs):
    run_dir = runs["tmp"] / "straight"
    steps, vals = metrics(run_dir)
    assert [r["step"] for r in steps] == list(range(1, 21)) and all(STEP_KEYS <= r.keys() for r in steps)
    assert steps[-1]["tokens_seen"] == 20 * 4 * 2 * 2 * 32  # steps x micro batch x accum x ranks x seq_len
    assert steps[-1]["loss"] < steps[0]["loss"] - 0.5  # it learns
    assert steps[0]["lr"] < steps[3]["lr"] and steps[-1]["lr"] < steps[3]["lr"]  # warmup, then decay
    assert [v["step"] for v in vals] == [10, 20] and vals[-1]["val_ppl"] == pytest.approx(2.718281828 ** vals[-1]["val_loss"], rel=1e-6)
    assert sorted(p.name for p in (run_dir / "heartbeat").iterdir()) == ["rank0", "rank1"]
    done = json.loads((run_dir / "COMPLETED.json").read_text())
    assert done["step"] == 20 and done["final_loss"] == steps[-1]["loss"] and done["val_loss"] == vals[-1]["val_loss"]
    assert done["tokens_seen"] == steps[-1]["tokens_seen"] and done["wall_s"] > 0
    assert done["checkpoint"] == str(run_dir / "checkpoints" / "global_step20")
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "global_step20"


def test_resume_from_object_storage_repeats_the_straight_run(runs):
    straight_steps, straight_vals = metrics(runs["tmp"] / "straight")
    first_steps, _ = runs["first_half"]
    assert [r["step"] for r in first_steps] == list(range(1, 11))
    assert not runs["completed_after_first"] and runs["latest_after_first"] == "global_step10"
    steps, vals = metrics(runs["tmp"] / "resumed")
    assert [r["step"] for r in steps] == list(range(1, 21))  # 1-10 from the first launch, 11-20 after resume
    # ZeRO-3 + resume against ZeRO-2 straight: fp32 math is the same up to reduction order.
    for a, b in zip(straight_steps, steps):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4) and b["lr"] == pytest.approx(a["lr"], rel=1e-9)
    assert [v["val_loss"] for v in vals] == pytest.approx([v["val_loss"] for v in straight_vals], rel=1e-4)
    done = json.loads((runs["tmp"] / "resumed" / "COMPLETED.json").read_text())
    assert done["step"] == 20 and done["checkpoint"] == f"{runs['ckpt_uri']}/global_step20"


def test_export_loads_in_transformers_with_the_same_logits(runs, tmp_path, source_docs, capsys):
    from transformers import AutoTokenizer, LlamaForCausalLM

    out = tmp_path / "hf"
    assert cli(["export", "--checkpoint", runs["ckpt_uri"], "--out", str(out)]) == 0  # from object storage
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in out.iterdir()}
    meta = json.loads((out / "tokenmill.json").read_text())
    assert meta["step"] == 20
    native = Llama(ModelConfig(**meta["model"])).eval()
    native.load_state_dict(load_native_state(runs["tmp"] / "straight" / "checkpoints" / "global_step20"))
    hf = LlamaForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.eos_token_id == 0 and tok.pad_token_id == 1
    ids = torch.tensor([tok(source_docs[3]["text"][:300])["input_ids"][:48]])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, native(ids), atol=1e-4, rtol=1e-4)
    assert cli(["export", "--checkpoint", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert "not a tokenmill checkpoint" in capsys.readouterr().err


def test_non_finite_loss_stops_training_with_a_clear_error(tmp_path, token_dataset):
    args = config(tmp_path, token_dataset, "nan", **{"debug.nan_at_step": 2, "train.steps": 3})
    result = launch(args, ranks=1)
    assert result.returncode != 0
    assert "loss is nan at step 2" in result.stdout
    assert not (tmp_path / "nan" / "COMPLETED.json").exists()
    record = json.loads((tmp_path / "nan" / "failures" / "rank0.json").read_text())
    assert (record["kind"], record["step"], record["since_step"]) == ("diverged", 2, 2)


def test_a_rank_dying_inside_a_checkpoint_leaves_the_run_resumable(tmp_path, token_dataset, source_dataset, tokenizer_uri, s3_settings):
    """Rank 1 dies after DeepSpeed wrote its part of the step-8 checkpoint and before its
    training state (injected). `latest` still names step 4, the half-written tag has no commit
    marker, and the next launch resumes from step 4 and finishes. Resuming the same run on
    another token dataset is refused as a configuration error before anything is loaded."""
    args = config(tmp_path, token_dataset, "crash", **{"train.steps": 8, "checkpoint.every": 4, "eval.every": 0})
    first = launch([*args, "--set=debug.die_in_checkpoint_at_step=8"])
    assert first.returncode != 0 and "dies inside the checkpoint on purpose" in first.stdout
    checkpoints = tmp_path / "crash" / "checkpoints"
    assert (checkpoints / "latest").read_text() == "global_step4"
    assert (checkpoints / "global_step8").exists() and not (checkpoints / "global_step8" / "tokenmill.json").exists()
    second = launch([*args, "--resume"])
    assert second.returncode == 0, second.stdout[-3000:]
    steps, _ = metrics(tmp_path / "crash")
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6, 7, 8, 5, 6, 7, 8]
    assert json.loads((tmp_path / "crash" / "COMPLETED.json").read_text())["checkpoint"].endswith("global_step8")
    assert (checkpoints / "latest").read_text() == "global_step8"

    other = tokenize_dataset(source_dataset.dataset_uri, source_dataset.version, tokenizer_uri, token_dataset["dataset"], SEQ_LEN,
                             val_fraction=0.2, store=ObjectStore(s3_settings), rows_per_group=128)  # fmt: skip
    assert other["uri"] != token_dataset["uri"]
    third = launch([*config(tmp_path, other, "crash", **{"train.steps": 8, "checkpoint.every": 4, "eval.every": 0}), "--resume"], ranks=1)
    assert third.returncode != 0 and "from a different setup (token dataset: checkpoint" in third.stdout, third.stdout[-3000:]
    record = json.loads((tmp_path / "crash" / "failures" / "rank0.json").read_text())
    assert record["kind"] == "config" and other["uri"] in record["message"]
