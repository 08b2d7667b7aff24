"""Integrations of edd_ext with training frameworks.

Each subpackage needs its framework installed and is imported on its own, e.g.
``from edd_ext.integrations.transformers import EnsembleDistillationTrainer`` (``pip install
"edd_ext[transformers]"``); importing this package imports none of them.
"""
