"""Worker of tests/test_distributed.py: the same training run on one process or, under
``torchrun --nproc_per_node 2``, on two (gloo, CPU), written to ``--out`` for the test to compare.

Runs (each a few optimiser steps on the same global batches of 4 sequences with different lengths):

* ``plain/<loss>``: a DistributedDataParallel loop calling the fused losses directly, normalised with
  ``edd_ext.distributed.global_token_count`` (the README's pattern); one process takes each step's 4
  sequences as one micro-batch, each of two processes takes 2 micro-batches of 1 (gradient accumulation);
* ``plain_mean/<loss>``: the same loop with ``reduction="mean"`` per micro-batch (what the pattern replaces);
* ``trainer/<loss>`` (when transformers is installed): ``EnsembleDistillationTrainer`` on a tiny Marian,
  ``per_device_train_batch_size`` 4 on one process, 1 with 2 accumulation steps on each of two;
* ``trainer_local/<loss>``: the same with ``average_tokens_across_devices=False`` (per-process normalisation).

Each run records the per-step losses and the final parameters.
"""
import argparse
import contextlib
import copy
import os
import sys

import torch
import torch.distributed as dist
from torch import nn

import edd_ext as E

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, GLOBAL_BATCH, LENGTH, DIM, VOCAB, MEMBERS = 3, 4, 6, 8, 11, 3
PLAIN_LOSSES = ("proxy_dirichlet_kl", "logit_laplace_nll")
TRAINER_LOSSES = ("proxy_dirichlet_kl", "logit_gaussian_nll")


def world() -> "tuple[int, int]":
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


# --------------------------------------------------------------------------------------------------
# plain DistributedDataParallel loop
# --------------------------------------------------------------------------------------------------
class Student(nn.Module):
    def __init__(self, log_scale: bool):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(DIM, 16), nn.Tanh())
        self.loc = nn.Linear(16, VOCAB)
        self.log_scale = nn.Linear(16, VOCAB) if log_scale else None

    def forward(self, x):
        h = self.body(x)
        return self.loc(h), None if self.log_scale is None else self.log_scale(h)


def plain_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(STEPS * GLOBAL_BATCH, LENGTH, DIM, generator=g)
    teacher = torch.randn(MEMBERS, DIM, VOCAB, generator=g)
    logits = torch.einsum("btd,mdv->btmv", x, teacher)  # [N, T, M, V]
    lengths = torch.tensor([1, 6, 2, 5, 3, 6, 1, 4, 6, 2, 5, 1])  # micro-batches with different token counts
    mask = torch.arange(LENGTH)[None, :] < lengths[:, None]
    return x, logits, mask


def plain_loss(loss_name, model, x, logits, mask, reduction):
    loc, log_scale = model(x)
    if log_scale is None:
        return getattr(E, loss_name)(loc, E.ensemble_stats(logits), mask=mask, reduction=reduction)
    return getattr(E, loss_name)(loc, log_scale, logits, mask=mask, reduction=reduction)


def run_plain(loss_name: str, normalise: str) -> dict:
    rank, size = world()
    torch.manual_seed(0)
    model = Student(log_scale=loss_name.startswith("logit"))
    ddp = nn.parallel.DistributedDataParallel(model) if size > 1 else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, logits, mask = plain_data()
    per_process = GLOBAL_BATCH // size
    micro = 1 if size > 1 else GLOBAL_BATCH  # two accumulation steps on two processes, one on one
    losses = []
    for step in range(STEPS):
        start = step * GLOBAL_BATCH + rank * per_process
        rows = [slice(i, i + micro) for i in range(start, start + per_process, micro)]
        n = E.distributed.global_token_count([mask[r] for r in rows])
        total = torch.zeros(())
        for j, r in enumerate(rows):
            sync = ddp.no_sync() if size > 1 and j < len(rows) - 1 else contextlib.nullcontext()
            with sync:
                if normalise == "global":
                    loss = plain_loss(loss_name, ddp, x[r], logits[r], mask[r], "sum") * size / n
                else:  # per micro-batch mean, averaged over the accumulation steps and (by DDP) the processes
                    loss = plain_loss(loss_name, ddp, x[r], logits[r], mask[r], "mean") / len(rows)
                loss.backward()
            total += loss.detach()
        if size > 1:
            dist.all_reduce(total)
            total /= size
        losses.append(float(total))
        opt.step()
        opt.zero_grad()
    return {"losses": losses, "params": {k: v.detach().clone() for k, v in model.state_dict().items()}}


# --------------------------------------------------------------------------------------------------
# EnsembleDistillationTrainer
# --------------------------------------------------------------------------------------------------
def run_trainer(loss_name: str, average_tokens: bool, out_dir: str) -> dict:
    sys.path.insert(0, os.path.join(ROOT, "python_examples", "transformers"))
    from toy_seq2seq import encode_pairs, marian_config, word_tokenizer
    from transformers import DataCollatorForSeq2Seq, MarianMTModel, Seq2SeqTrainingArguments

    from edd_ext.integrations.transformers import EnsembleDistillationTrainer, LogScaleHeadForSeq2SeqLM

    rank, size = world()
    words = [f"w{i}" for i in range(20)]
    sources = [" ".join(words[(3 * i + j) % 20] for j in range(1 + i % 5)) for i in range(STEPS * GLOBAL_BATCH)]
    targets = [" ".join(words[(7 * i + 2 * j) % 20] for j in range(1 + (5 * i) % 6)) for i in range(len(sources))]
    tokenizer = word_tokenizer(sources + targets)
    data = encode_pairs(tokenizer, sources, targets)
    torch.manual_seed(0)
    teachers = [MarianMTModel(marian_config(tokenizer, d_model=16, ffn=32)) for _ in range(MEMBERS)]
    student = MarianMTModel(marian_config(tokenizer, d_model=16, ffn=32))
    if loss_name.startswith("logit"):
        student = LogScaleHeadForSeq2SeqLM.from_model(student)
    args = Seq2SeqTrainingArguments(
        output_dir=out_dir, use_cpu=True, report_to=[], max_steps=STEPS, learning_rate=1e-2,
        lr_scheduler_type="constant", per_device_train_batch_size=GLOBAL_BATCH // size // (2 if size > 1 else 1),
        gradient_accumulation_steps=2 if size > 1 else 1, train_sampling_strategy="sequential",
        average_tokens_across_devices=average_tokens, logging_steps=1, save_strategy="no",
        remove_unused_columns=False, disable_tqdm=True, dataloader_num_workers=0, seed=0)
    trainer = EnsembleDistillationTrainer(
        model=student, args=args, teachers=teachers, loss=loss_name, train_dataset=data,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=student), processing_class=tokenizer,
        anchor_weight=0.5 if loss_name.startswith("logit") else 0.0)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    params = {k: v.detach().clone() for k, v in copy.deepcopy(student).state_dict().items()}
    return {"losses": losses, "params": params}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        dist.init_process_group("gloo")
    results = {}
    for loss in PLAIN_LOSSES:
        results[f"plain/{loss}"] = run_plain(loss, "global")
        results[f"plain_mean/{loss}"] = run_plain(loss, "mean")
    try:
        import transformers  # noqa: F401
    except ImportError:
        transformers = None
    if transformers is not None:
        for loss in TRAINER_LOSSES:
            results[f"trainer/{loss}"] = run_trainer(loss, True, args.out + ".trainer")
            if world()[1] > 1:
                results[f"trainer_local/{loss}"] = run_trainer(loss, False, args.out + ".trainer")
    if world()[0] == 0:
        torch.save(results, args.out)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
