"""End-to-end ensemble-distribution-distillation demo: ``python -m edd_ext.demo [--quick]`` or ``edd-demo``.

It builds a toy parallel corpus with real ambiguity (or reads the user's files), trains an ensemble of
small transformer translation models, distils it into one student per method (EnD, EnD², Proxy-Dirichlet,
logit Gaussian, logit Laplace) with the library's losses, and evaluates BLEU, prediction rejection and
out-of-distribution detection for the ensemble, a single model and every student.

Modules: ``corpus`` (data and the checks of the user's files), ``subword`` (``--bpe``: SentencePiece),
``model`` (the transformer and its incremental decoder states), ``train`` (teachers and students), ``decode``
(greedy and beam-search decoding, uncertainty scoring), ``evaluate`` (metrics), ``plan`` (the up-front time
estimate), ``report`` (table, JSON, figure). Every library call goes through the public ``edd_ext`` API, on
the ``--device`` the run uses.
"""
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    """Run the demo with command-line arguments ``argv`` (default: ``sys.argv[1:]``)."""
    from .__main__ import main as _main

    return _main(argv)
