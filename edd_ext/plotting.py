"""Figures for uncertainty evaluation: prediction-rejection curves and in-/out-of-domain histograms.

matplotlib is an optional dependency, imported only when a function here is called. Figures are drawn on
matplotlib's Agg canvas directly (``matplotlib.figure.Figure``), so calling these functions neither
changes the active pyplot backend nor leaves figures open in pyplot. Every function writes one image
(format from the file extension, e.g. ``.png`` or ``.pdf``), creates missing parent directories, and
returns the path written as a :class:`pathlib.Path`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import metrics

__all__ = ["plot_rejection_curves", "plot_uncertainty_histograms", "plot_summary"]

PathLike = Union[str, os.PathLike]


def _new_figure(nrows: int = 1, ncols: int = 1, *, panel_size: Tuple[float, float] = (5.0, 4.0)):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            "edd_ext.plotting needs matplotlib, which is an optional dependency; "
            "install it with `pip install matplotlib`"
        ) from err
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig: Any, path: PathLike) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return out


def _draw_rejection(ax: Any, curves: Mapping[str, Tuple[Any, Any]], title: Optional[str]) -> None:
    if not curves:
        raise ValueError("curves: expected at least one entry name -> (uncertainty, error), got none")
    computed = {}
    for name, pair in curves.items():
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise ValueError(f"curves[{name!r}]: expected a pair (uncertainty, error), got {type(pair).__name__}")
        computed[name] = (metrics.rejection_curve(pair[0], pair[1]), metrics._as_float64("error", pair[1]))

    # Oracle and random depend only on the error: draw them once per distinct error vector.
    references = []
    for name, (curve, error) in computed.items():
        if not any(np.array_equal(ref_error, error) for _, _, ref_error in references):
            references.append((name, curve, error))
    shared = len(references) == 1

    colors = {}
    for name, (curve, _) in computed.items():
        prr = "nan" if np.isnan(curve.prr) else f"{curve.prr:.1f}"
        (line,) = ax.plot(curve.fraction_rejected, curve.uncertainty, lw=1.8, label=f"{name} (PRR {prr})")
        colors[name] = line.get_color()
    for name, curve, _ in references:
        # One shared pair of references is black and gray; otherwise each takes its first curve's colour.
        suffix = "" if shared else f" ({name})"
        oracle_color, random_color = ("black", "gray") if shared else (colors[name], colors[name])
        ax.plot(curve.fraction_rejected, curve.oracle, color=oracle_color, ls="--", lw=1.2, label=f"oracle{suffix}")
        ax.plot(curve.fraction_rejected, curve.random, color=random_color, ls=":", lw=1.2, label=f"random{suffix}")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(bottom=0.0)
    ax.set_xlabel("fraction rejected")
    ax.set_ylabel("mean error (rejected items count as 0)")
    ax.set_title(title if title is not None else "Prediction rejection")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def _draw_histograms(
    ax: Any, id_scores: Any, ood_scores: Any, title: Optional[str], bins: Optional[int], labels: Sequence[str]
) -> None:
    neg = metrics._as_float64("in_domain_scores", id_scores)
    pos = metrics._as_float64("out_of_domain_scores", ood_scores)
    score = metrics.auroc(neg, pos)
    finite = np.concatenate([neg, pos])
    finite = finite[np.isfinite(finite)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    if bins is None:
        bins = int(np.clip(np.sqrt(neg.size + pos.size), 10, 50))
    if bins < 1:
        raise ValueError(f"bins: expected a positive integer, got {bins!r}")
    edges = np.linspace(lo, hi, bins + 1)
    # Clip infinite scores into the outer bins so they stay visible; densities make unequal sizes comparable.
    for values, label, color in ((neg, labels[0], "tab:blue"), (pos, labels[1], "tab:orange")):
        ax.hist(np.clip(values, lo, hi), bins=edges, density=True, alpha=0.5, color=color,
                label=f"{label} (n={values.size})")
    heading = title if title is not None else "Uncertainty"
    ax.set_title(f"{heading} — AUROC {score:.3f}")
    ax.set_xlabel("score")
    ax.set_ylabel("density")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def plot_rejection_curves(
    curves: Mapping[str, Tuple[Any, Any]],
    path: PathLike,
    *,
    title: Optional[str] = None,
) -> Path:
    """Plot prediction-rejection curves, with the oracle and random references and the PRR of each curve
    in the legend (conventions of :mod:`edd_ext.metrics`).

    Args:
        curves: ``name -> (uncertainty, error)``, each a pair of ``[N]`` tensors, arrays or sequences.
            Entries that share the same error share one oracle and one random line; otherwise each
            distinct error gets its own, labelled with the first entry's name.
        path: output file; the extension selects the format.
        title: axes title (default ``"Prediction rejection"``).

    Returns:
        ``Path(path)``.

    Raises:
        ImportError: if matplotlib is not installed.
        ValueError: for an empty mapping, an entry that is not a pair, or invalid metric inputs.
    """
    fig, axes = _new_figure()
    _draw_rejection(axes[0, 0], curves, title)
    return _save(fig, path)


def plot_uncertainty_histograms(
    id_scores: Any,
    ood_scores: Any,
    path: PathLike,
    *,
    title: Optional[str] = None,
    bins: Optional[int] = None,
    labels: Sequence[str] = ("in-domain", "out-of-domain"),
) -> Path:
    """Overlaid density histograms of in-domain and out-of-domain scores, with the AUROC in the title.

    Args:
        id_scores: ``[N_id]`` scores of in-domain items (tensor, array or sequence).
        ood_scores: ``[N_ood]`` scores of out-of-domain items.
        path: output file; the extension selects the format.
        title: title prefix (default ``"Uncertainty"``); ``" — AUROC x.xxx"`` is appended.
        bins: number of shared bins spanning both sets; ``None`` picks ``sqrt(N_id + N_ood)`` clipped to
            ``[10, 50]``.
        labels: legend labels of the two sets.

    Returns:
        ``Path(path)``.

    Raises:
        ImportError: if matplotlib is not installed.
        ValueError: for empty or NaN scores (as :func:`edd_ext.metrics.auroc`).
    """
    fig, axes = _new_figure()
    _draw_histograms(axes[0, 0], id_scores, ood_scores, title, bins, labels)
    return _save(fig, path)


def plot_summary(
    path: PathLike,
    *,
    rejection: Optional[Mapping[str, Tuple[Any, Any]]] = None,
    ood: Optional[Mapping[str, Tuple[Any, Any]]] = None,
    title: Optional[str] = None,
    ncols: int = 3,
    bins: Optional[int] = None,
) -> Path:
    """One figure with a panel grid: the rejection curves first, then one histogram panel per OOD measure.

    Args:
        path: output file; the extension selects the format.
        rejection: ``name -> (uncertainty, error)`` as in :func:`plot_rejection_curves`, or ``None``.
        ood: ``measure name -> (id_scores, ood_scores)``, one histogram panel each, or ``None``.
        title: figure title.
        ncols: panels per row.
        bins: histogram bins (as in :func:`plot_uncertainty_histograms`).

    Returns:
        ``Path(path)``.

    Raises:
        ImportError: if matplotlib is not installed.
        ValueError: if both ``rejection`` and ``ood`` are empty, ``ncols < 1``, or inputs are invalid.
    """
    ood = dict(ood or {})
    panels = (1 if rejection else 0) + len(ood)
    if panels == 0:
        raise ValueError("rejection and ood: expected at least one non-empty mapping, got neither")
    if ncols < 1:
        raise ValueError(f"ncols: expected a positive integer, got {ncols!r}")
    ncols = min(ncols, panels)
    nrows = -(-panels // ncols)
    fig, axes = _new_figure(nrows, ncols)
    flat = list(axes.reshape(-1))
    if rejection:
        _draw_rejection(flat.pop(0), rejection, None)
    for name, pair in ood.items():
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise ValueError(f"ood[{name!r}]: expected a pair (id_scores, ood_scores), got {type(pair).__name__}")
        _draw_histograms(flat.pop(0), pair[0], pair[1], name, bins, ("in-domain", "out-of-domain"))
    for ax in flat:
        ax.set_axis_off()
    if title is not None:
        fig.suptitle(title)
    return _save(fig, path)
