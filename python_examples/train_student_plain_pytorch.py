"""Distil an ensemble into one student with a fused edd_ext loss, in a plain PyTorch training loop.

The teachers here are M small random networks that disagree more on some inputs than on others; in
practice they are your trained ensemble and ``teacher_logits`` comes from their forward passes (or from
a cache on disk). Shapes follow a seq2seq model: ``[B, T, M, V]`` teacher logits, ``[B, T, V]`` student
outputs and a ``[B, T]`` padding mask.

    python python_examples/train_student_plain_pytorch.py [--steps 300] [--vocab 1000]
"""
import argparse

import torch
from torch import nn

import edd_ext as E


def make_teachers(dim: int, vocab: int, members: int) -> nn.ModuleList:
    torch.manual_seed(0)
    base = nn.Linear(dim, vocab)
    teachers = nn.ModuleList()
    for _ in range(members):  # members share a base and differ by a random perturbation
        t = nn.Linear(dim, vocab)
        with torch.no_grad():
            t.weight.copy_(base.weight * 4 + torch.randn_like(base.weight) / dim ** 0.5)
            t.bias.copy_(base.bias)
        teachers.append(t.requires_grad_(False))
    return teachers


def batch(batch_size: int, length: int, dim: int, generator: torch.Generator):
    # Inputs far from the origin are where the members' perturbations, hence their disagreement, grow.
    radius = 0.25 + 2.0 * torch.rand(batch_size, length, 1, generator=generator)
    x = radius * torch.nn.functional.normalize(torch.randn(batch_size, length, dim, generator=generator), dim=-1)
    lengths = torch.randint(1, length + 1, (batch_size,), generator=generator)
    mask = torch.arange(length)[None, :] < lengths[:, None]  # [B, T], True = real token
    return x, mask


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--vocab", type=int, default=1000)
    p.add_argument("--members", type=int, default=5)
    p.add_argument("--loss", choices=["proxy", "end2", "end", "gaussian"], default="proxy")
    args = p.parse_args()
    dim, batch_size, length = 32, 16, 12
    teachers = make_teachers(dim, args.vocab, args.members)
    student = nn.Sequential(nn.Linear(dim, 128), nn.GELU(), nn.Linear(128, args.vocab))
    log_scale_head = nn.Linear(dim, args.vocab)  # only the logit-space loss uses a second head
    params = list(student.parameters()) + (list(log_scale_head.parameters()) if args.loss == "gaussian" else [])
    opt = torch.optim.Adam(params, lr=3e-3)
    gen = torch.Generator().manual_seed(1)

    for step in range(args.steps + 1):
        x, mask = batch(batch_size, length, dim, gen)
        with torch.no_grad():
            teacher_logits = torch.stack([t(x) for t in teachers], dim=-2)  # [B, T, M, V]
            stats = E.ensemble_stats(teacher_logits)  # once per batch, shared by the losses below
        z = student(x)  # [B, T, V]
        if args.loss == "proxy":
            loss = E.proxy_dirichlet_kl(z, stats, mask=mask)
        elif args.loss == "end2":
            loss = E.dirichlet_nll(z, stats, mask=mask)
        elif args.loss == "end":
            loss = E.ensemble_kl(z, stats, mask=mask)
        else:  # Gaussian over the teachers' normalised logits: needs the members themselves
            loss = E.logit_gaussian_nll(z, log_scale_head(x), teacher_logits, mask=mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0:
            print(f"step {step:4d}  loss {loss.item():.4f}")

    # The student's knowledge uncertainty should rank inputs like the ensemble's mutual information.
    x, mask = batch(256, length, dim, gen)
    with torch.no_grad():
        teacher_mi = E.uncertainty.ensemble(torch.stack([t(x) for t in teachers], dim=-2)).mutual_information[mask]
        z = student(x)
        if args.loss == "gaussian":
            student_mi = E.uncertainty.logit_distribution(z, log_scale_head(x)).mutual_information[mask]
        elif args.loss == "end":
            student_mi = None  # EnD keeps only the ensemble mean: no knowledge uncertainty
        else:
            student_mi = E.uncertainty.dirichlet(z).mutual_information[mask]
    if student_mi is None:
        print("EnD distils only the ensemble mean: its student has no knowledge uncertainty to compare")
        return
    rank = lambda v: v.argsort().argsort().double()  # noqa: E731
    rho = torch.corrcoef(torch.stack([rank(teacher_mi), rank(student_mi)]))[0, 1]
    print(f"Spearman correlation of student vs ensemble mutual information: {rho:.3f}")


if __name__ == "__main__":
    main()
