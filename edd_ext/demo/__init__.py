"""End-to-end ensemble-distribution-distillation demo: ``python -m edd_ext.demo [--quick]``.

It builds a toy parallel corpus with real ambiguity (or reads the user's files), trains an ensemble of
small transformer translation models, distils it into one student per method (EnD, EnD², Proxy-Dirichlet,
logit Gaussian, logit Laplace) with the library's losses, and evaluates BLEU, prediction rejection and
out-of-distribution detection for the ensemble, a single model and every student.
"""
from .__main__ import main, run  # noqa: F401
