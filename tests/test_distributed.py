"""Data-parallel training gives the single-process result: two processes (``torchrun --nproc_per_node 2``,
gloo, CPU) with gradient accumulation against one process on the same global batches, for a plain
DistributedDataParallel loop calling the fused losses (normalised with
``edd_ext.distributed.global_token_count``) and for ``EnsembleDistillationTrainer`` (normalised with the
Trainer's ``num_items_in_batch``), each with a Dirichlet loss and a logit-space loss.

The runs are in tests/distributed_worker.py. The per-micro-batch ``"mean"`` normalisation, and the trainer
with ``average_tokens_across_devices=False``, are run too and must *differ* from the single process: the
micro-batches hold different numbers of tokens, so these tests can fail.
"""
import importlib.util
import os
import socket
import subprocess
import sys

import pytest
import torch

import edd_ext as E

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORKER = os.path.join(HERE, "distributed_worker.py")
HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
NEEDS_TRANSFORMERS = pytest.mark.skipif(
    not HAS_TRANSFORMERS,
    reason="transformers is not installed (optional extra: pip install \"edd_ext[transformers]\")")
PLAIN_LOSSES = ("proxy_dirichlet_kl", "logit_laplace_nll")
TRAINER_LOSSES = ("proxy_dirichlet_kl", "logit_gaussian_nll")
TOL = dict(rtol=1e-5, atol=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd, out):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd + [WORKER, "--out", out], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return torch.load(out, weights_only=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    single = _run([sys.executable], str(tmp / "single.pt"))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
                "--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    return single, _run(torchrun, str(tmp / "ddp.pt"))


def _assert_same(single: dict, ddp: dict) -> None:
    torch.testing.assert_close(torch.tensor(ddp["losses"]), torch.tensor(single["losses"]), **TOL)
    assert single["params"].keys() == ddp["params"].keys()
    for name, value in single["params"].items():
        torch.testing.assert_close(ddp["params"][name], value, **TOL, msg=lambda m, name=name: f"{name}: {m}")


def _max_param_difference(single: dict, other: dict) -> float:
    return max((other["params"][k].float() - v.float()).abs().max().item() for k, v in single["params"].items())


@pytest.mark.parametrize("loss", PLAIN_LOSSES)
def test_plain_ddp_loop_equals_one_process(runs, loss):
    single, ddp = runs
    _assert_same(single[f"plain/{loss}"], ddp[f"plain/{loss}"])


@pytest.mark.parametrize("loss", PLAIN_LOSSES)
def test_per_micro_batch_mean_differs_from_one_process(runs, loss):
    single, ddp = runs
    assert _max_param_difference(single[f"plain/{loss}"], ddp[f"plain_mean/{loss}"]) > 1e-3


@NEEDS_TRANSFORMERS
@pytest.mark.parametrize("loss", TRAINER_LOSSES)
def test_trainer_two_processes_equal_one_process(runs, loss):
    single, ddp = runs
    _assert_same(single[f"trainer/{loss}"], ddp[f"trainer/{loss}"])


@NEEDS_TRANSFORMERS
@pytest.mark.parametrize("loss", TRAINER_LOSSES)
def test_trainer_with_per_process_counts_differs(runs, loss):
    single, ddp = runs
    assert _max_param_difference(single[f"trainer/{loss}"], ddp[f"trainer_local/{loss}"]) > 1e-3


def test_global_token_count_without_a_process_group():
    masks = [torch.tensor([True, False, True]), torch.zeros(2, 2, dtype=torch.bool)]
    count = E.distributed.global_token_count(masks)
    assert count.dtype == torch.float32 and count.item() == 2.0
    assert E.distributed.global_token_count(torch.zeros(3, dtype=torch.bool)).item() == 1.0  # clamped: can divide


def test_global_token_count_rejects_non_bool_masks():
    with pytest.raises(ValueError, match=r"masks\[1\]: expected a bool Tensor, got torch.int64"):
        E.distributed.global_token_count([torch.ones(2, dtype=torch.bool), torch.ones(2, dtype=torch.long)])
    with pytest.raises(ValueError, match="masks: expected at least one"):
        E.distributed.global_token_count([])
