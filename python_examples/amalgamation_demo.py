"""Knowledge amalgamation with teacher uncertainty (MUKA, SPEC section 4) on handwritten digits.

Data: ``sklearn.datasets.load_digits`` — 1,797 greyscale 8x8 images of the digits 0-9, which ship inside
scikit-learn (nothing is downloaded). The images are split three ways, stratified by digit:

* teacher pool (40 %): labelled; teacher A sees only its digits 0-4, teacher B only its digits 5-9;
* transfer set (30 %): the student's training data, used WITHOUT labels (the labels only score the targets);
* test set (30 %): held out; the student is scored on the 10-way problem over the union of the labels.

Each teacher is a small MLP with dropout over its own 5 classes. It never saw the other half of the digits,
so on those inputs it still predicts one of its own 5 classes; Monte-Carlo dropout (R passes) shows how
sure it is. The student (an MLP over all 10 digits) is distilled on the transfer set with
``edd_ext.amalgamation.amalgamation_loss`` using

* ``hard``:    the target of each input is the distribution of the teacher with the best score
               1 − H[p̄]/ln 5;
* ``soft``:    the score-softmax (temperature 0.2) mixture of both teachers' distributions;
* ``average``: the uncertainty-free baseline, the plain average of the two zero-padded distributions
               (the same MC-dropout means p̄, only the weighting differs);

plus two variants (``hard + margin``: each input weighted by the gap between the two scores;
``soft, MI score``: the score from the mutual information instead of the entropy) and, for scale, a
student trained on the transfer set's true labels (``supervised``, an upper bound that amalgamation cannot
use). Columns: routing = how often the teacher that owns the true digit gets the largest weight;
owner mass = the target's mean probability mass on the digits of that teacher; target acc = accuracy of
the argmax of the amalgamated target on the transfer set; student acc = held-out 10-way test accuracy of
the distilled student.

What to expect: all three rules route about equally well (the argmax of the plain average already follows
the more confident teacher), but the plain average leaves half of each target's mass on the digits of the
teacher that never saw the input's class; a student distilled on it separates the two halves of the label
set poorly and loses on the test set. Uncertainty-weighted targets put most (soft) or all (hard) of the
mass on the digits of the teacher judged adequate.

Run: ``python python_examples/amalgamation_demo.py [--quick] [--seeds N]``. ``run(quick=True, seed=0)``
returns the numbers as a dict.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import nn

try:
    import edd_ext.amalgamation as amalg
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import edd_ext.amalgamation as amalg

LABEL_SUBSETS: Tuple[Tuple[int, ...], ...] = ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9))
NUM_CLASSES = 10

#: (method name, keyword arguments of amalgamation_loss); None = supervised upper bound.
METHODS: Tuple[Tuple[str, dict], ...] = (
    ("average", dict(mode="average")),
    ("hard", dict(mode="hard")),
    ("soft", dict(mode="soft", selection_temperature=0.2)),
    ("hard + margin", dict(mode="hard", margin_weighting=True)),
    ("soft, MI score", dict(mode="soft", selection_temperature=0.2, measure="mutual_information")),
)


def _mlp(d_in: int, d_hidden: int, d_out: int, dropout: float) -> nn.Module:
    return nn.Sequential(
        nn.Linear(d_in, d_hidden), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(d_hidden, d_hidden), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(d_hidden, d_out),
    )


def load_data(seed: int) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
    """The digits, scaled to [0, 1], split 40/30/30 (teacher pool / transfer / test), stratified by digit."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_pool, x_rest, y_pool, y_rest = train_test_split(x, y, train_size=0.4, stratify=y, random_state=seed)
    x_tr, x_te, y_tr, y_te = train_test_split(x_rest, y_rest, train_size=0.5, stratify=y_rest, random_state=seed)
    t = lambda a, b: (torch.from_numpy(a), torch.from_numpy(b).long())  # noqa: E731
    return {"pool": t(x_pool, y_pool), "transfer": t(x_tr, y_tr), "test": t(x_te, y_te)}


def _train(model: nn.Module, x: torch.Tensor, loss_fn, steps: int, lr: float = 3e-3, batch: int = 128,
           seed: int = 0) -> nn.Module:
    """Adam on random minibatches; ``loss_fn(logits, index)`` gets the minibatch's row indices."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (min(batch, x.shape[0]),), generator=g)
        loss = loss_fn(model(x[idx]), idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model


def train_teachers(pool: Tuple[torch.Tensor, torch.Tensor], steps: int, seed: int) -> List[nn.Module]:
    """One teacher per label subset, each trained with cross-entropy on its own digits only."""
    x, y = pool
    teachers = []
    for i, subset in enumerate(LABEL_SUBSETS):
        keep = torch.isin(y, torch.tensor(subset))
        xs = x[keep]
        local = torch.full((NUM_CLASSES,), -1, dtype=torch.long)
        local[list(subset)] = torch.arange(len(subset))
        ys = local[y[keep]]
        torch.manual_seed(seed * 100 + i)
        model = _mlp(x.shape[1], 64, len(subset), dropout=0.3)
        ce = nn.CrossEntropyLoss()
        teachers.append(_train(model, xs, lambda out, idx, ys=ys, ce=ce: ce(out, ys[idx]), steps, seed=seed * 100 + i))
    return teachers


def _accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    return float((pred == y).double().mean())


def run(quick: bool = True, seed: int = 0, verbose: bool = False) -> Dict[str, object]:
    """Train both teachers and one student per method; return the scores.

    Returns:
        ``{"methods": {name: {"student_acc", "target_acc", "routing_acc", "owner_mass"}}, "teacher_acc": [...],
        "num_passes", "seconds", "quick", "seed"}`` — accuracies in [0, 1]; ``routing_acc`` is None for
        ``average`` and ``supervised``; ``teacher_acc[i]`` is teacher i's test accuracy on its own digits.
    """
    start = time.perf_counter()
    torch.manual_seed(seed)
    data = load_data(seed)
    teacher_steps, student_steps, num_passes = (300, 400, 8) if quick else (800, 1500, 16)
    teachers = train_teachers(data["pool"], teacher_steps, seed)
    label_maps = [list(s) for s in LABEL_SUBSETS]

    x_te, y_te = data["test"]
    teacher_acc = []
    for t, subset in zip(teachers, LABEL_SUBSETS):
        keep = torch.isin(y_te, torch.tensor(subset))
        with torch.no_grad():
            pred = torch.tensor(subset)[t(x_te[keep]).argmax(-1)]
        teacher_acc.append(_accuracy(pred, y_te[keep]))

    # Teachers are fixed: their R dropout passes on the transfer set are computed once ([N, R, 5] each).
    x_tr, y_tr = data["transfer"]
    torch.manual_seed(seed + 12345)
    mc = [amalg.mc_dropout_logits(t, x_tr, num_passes=num_passes) for t in teachers]
    owner = torch.tensor([0 if int(c) in LABEL_SUBSETS[0] else 1 for c in y_tr])
    subset_of = torch.zeros(len(LABEL_SUBSETS), NUM_CLASSES)
    for i, subset in enumerate(LABEL_SUBSETS):
        subset_of[i, list(subset)] = 1.0
    owner_mask = subset_of[owner]  # [N, 10]: 1 on the digits of the teacher that owns the true digit

    results: Dict[str, Dict[str, object]] = {}
    for name, kw in METHODS:
        targets_kw = {k: v for k, v in kw.items() if k != "margin_weighting"}
        amalgam = amalg.amalgamation_targets(mc, label_maps, NUM_CLASSES, **targets_kw)
        routing = None if kw["mode"] == "average" else _accuracy(amalgam.weights.argmax(-1), owner)
        torch.manual_seed(seed * 100 + 7)
        student = _mlp(x_tr.shape[1], 64, NUM_CLASSES, dropout=0.1)
        loss_fn = lambda out, idx, kw=kw: amalg.amalgamation_loss(  # noqa: E731
            out, [m[idx] for m in mc], label_maps, **kw)
        _train(student, x_tr, loss_fn, student_steps, seed=seed * 100 + 7)
        with torch.no_grad():
            acc = _accuracy(student(x_te).argmax(-1), y_te)
        results[name] = {"student_acc": acc, "target_acc": _accuracy(amalgam.target.argmax(-1), y_tr),
                         "routing_acc": routing, "owner_mass": float((amalgam.target * owner_mask).sum(-1).mean())}

    torch.manual_seed(seed * 100 + 7)
    student = _mlp(x_tr.shape[1], 64, NUM_CLASSES, dropout=0.1)
    ce = nn.CrossEntropyLoss()
    _train(student, x_tr, lambda out, idx: ce(out, y_tr[idx]), student_steps, seed=seed * 100 + 7)
    with torch.no_grad():
        results["supervised"] = {"student_acc": _accuracy(student(x_te).argmax(-1), y_te), "target_acc": 1.0,
                                 "routing_acc": None, "owner_mass": 1.0}
    out = {"methods": results, "teacher_acc": teacher_acc, "num_passes": num_passes, "quick": quick,
           "seed": seed, "seconds": time.perf_counter() - start}
    if verbose:
        print(f"seed {seed}: {out['seconds']:.1f} s", file=sys.stderr)
    return out


def format_table(runs: Sequence[Dict[str, object]]) -> str:
    """Mean (and, over several seeds, ± standard deviation) of every column, one row per method."""
    def cell(values: List[float]) -> str:
        if not values:
            return "—"
        a = np.asarray(values) * 100
        return f"{a.mean():5.1f}" + (f" ± {a.std(ddof=1):.1f}" if len(a) > 1 else "")

    names = list(runs[0]["methods"])
    rows = [("method", "routing %", "owner mass %", "target acc %", "student test acc %")]
    for name in names:
        col = lambda key, name=name: [r["methods"][name][key] for r in runs if r["methods"][name][key] is not None]  # noqa: E731
        rows.append((name, cell(col("routing_acc")), cell(col("owner_mass")), cell(col("target_acc")),
                     cell(col("student_acc"))))
    n = len(rows[0])
    widths = [max(len(r[i]) for r in rows) for i in range(n)]
    lines = ["  ".join(r[i].ljust(widths[i]) if i == 0 else r[i].rjust(widths[i]) for i in range(n)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    teacher = ", ".join(cell([r["teacher_acc"][i] for r in runs]) for i in range(len(LABEL_SUBSETS)))
    r0 = runs[0]
    header = (f"digits: teachers on {LABEL_SUBSETS[0]} / {LABEL_SUBSETS[1]} (own-digit test acc %: {teacher}), "
              f"R = {r0['num_passes']} dropout passes, {len(runs)} seed(s), "
              f"{'quick' if r0['quick'] else 'full'} mode")
    return header + "\n" + "\n".join(lines)


def main(argv: Sequence[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and R = 8 passes (a few seconds)")
    parser.add_argument("--seeds", type=int, default=1, help="number of seeds to average (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    runs = [run(quick=args.quick, seed=args.seed + i, verbose=True) for i in range(args.seeds)]
    print(format_table(runs))


if __name__ == "__main__":
    main()
