"""Hugging Face ``transformers`` integration: distil an ensemble of seq2seq models (Marian, T5, BART, NLLB,
...) with ``Seq2SeqTrainer`` and decode with uncertainty.

* :class:`EnsembleDistillationTrainer` — a ``Seq2SeqTrainer`` whose loss is one of the library's five
  distillation losses, normalised by the optimisation step's token count across gradient accumulation and
  processes;
* :class:`LogScaleHeadForSeq2SeqLM` — the second (log-scale) output layer a logit-space student needs, saved and
  loaded with the model;
* :func:`generate_with_uncertainty` — ``generate`` 's hypotheses with token- and sequence-level uncertainty;
  :class:`EnsembleForGeneration` decodes with an ensemble's mean probability.

Needs ``pip install "edd_ext[transformers]"`` (the tested ``transformers`` version is pinned there).
"""
try:
    import transformers  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "edd_ext.integrations.transformers needs the transformers package: pip install \"edd_ext[transformers]\""
    ) from error

from .ensemble import EnsembleForGeneration
from .generation import GenerationWithUncertainty, generate_with_uncertainty
from .log_scale_head import LogScaleHeadConfig, LogScaleHeadForSeq2SeqLM
from .objective import LOSSES, DistillationObjective
from .trainer import EnsembleDistillationTrainer

__all__ = [
    "EnsembleDistillationTrainer",
    "DistillationObjective",
    "LOSSES",
    "LogScaleHeadConfig",
    "LogScaleHeadForSeq2SeqLM",
    "EnsembleForGeneration",
    "generate_with_uncertainty",
    "GenerationWithUncertainty",
]
