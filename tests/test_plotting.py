"""Figures (edd_ext.plotting): files are written, are valid PNGs, and matplotlib stays optional."""
import sys

import numpy as np
import pytest
import torch

from edd_ext import plotting

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    assert path.is_file()
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 100 and height > 100
    assert len(data) > 5_000  # something was drawn


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    error = np.clip(rng.gamma(2.0, 15.0, 300), 0, 100)
    return {
        "error": error,
        "good": error + rng.normal(0, 10, 300),
        "random": rng.random(300),
        "id": rng.normal(0, 1, 400),
        "ood": rng.normal(1.5, 1, 200),
    }


@pytest.fixture
def mpl():
    return pytest.importorskip("matplotlib", reason="matplotlib is an optional dependency of edd_ext.plotting")


def test_rejection_curves_png(mpl, tmp_path, data):
    backend = mpl.get_backend()
    out = plotting.plot_rejection_curves(
        {"EP": (torch.tensor(data["good"]), data["error"]), "random": (data["random"], data["error"])},
        tmp_path / "nested" / "rejection.png",
        title="Rejection",
    )
    assert out == tmp_path / "nested" / "rejection.png"
    assert_png(out)
    assert mpl.get_backend() == backend  # the global backend is left alone


def test_rejection_curves_with_different_errors_and_constant_uncertainty(mpl, tmp_path, data):
    out = plotting.plot_rejection_curves(
        {"a": (data["good"], data["error"]), "b": (np.ones(50), data["error"][:50] + 1)},
        str(tmp_path / "two.png"),
    )
    assert_png(out)


def test_histograms_png(mpl, tmp_path, data):
    out = plotting.plot_uncertainty_histograms(
        data["id"], torch.tensor(data["ood"]), tmp_path / "hist.png", title="Mutual information"
    )
    assert_png(out)
    # Infinite scores and a single repeated value still draw.
    assert_png(plotting.plot_uncertainty_histograms([1.0, 1.0, np.inf], [1.0], tmp_path / "flat.png", bins=5))


def test_summary_png(mpl, tmp_path, data):
    out = plotting.plot_summary(
        tmp_path / "summary.png",
        rejection={"EP": (data["good"], data["error"])},
        ood={"TU": (data["id"], data["ood"]), "MI": (np.exp(data["id"]), np.exp(data["ood"]))},
        title="Summary",
        ncols=2,
    )
    assert_png(out)
    assert_png(plotting.plot_summary(tmp_path / "only_ood.png", ood={"TU": (data["id"], data["ood"])}))


def test_invalid_inputs(mpl, tmp_path, data):
    with pytest.raises(ValueError, match="curves"):
        plotting.plot_rejection_curves({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"curves\['a'\]"):
        plotting.plot_rejection_curves({"a": data["error"]}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="in_domain_scores"):
        plotting.plot_uncertainty_histograms([], [1.0], tmp_path / "x.png")
    with pytest.raises(ValueError, match="rejection and ood"):
        plotting.plot_summary(tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_missing_matplotlib_gives_install_hint(monkeypatch, tmp_path):
    # A None entry in sys.modules makes the import fail, as if matplotlib were not installed.
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plotting.plot_uncertainty_histograms([0.0], [1.0], tmp_path / "x.png")
