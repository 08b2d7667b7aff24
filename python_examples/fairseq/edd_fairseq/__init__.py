"""fairseq plugin for ensemble distribution distillation with ``edd_ext`` (use as ``--user-dir``).

Registers:

* criteria ``edd_ensemble_kl``, ``edd_dirichlet_nll``, ``edd_proxy_dirichlet_kl``, ``edd_logit_gaussian``,
  ``edd_logit_laplace`` (:mod:`.criterions`);
* the task ``edd_distillation`` (:mod:`.task`): translation with a teacher ensemble and an optional on-disk
  teacher cache;
* the models ``edd_transformer_logit`` (a transformer with a log-scale head, archs ``edd_transformer_logit``
  and ``edd_transformer_logit_tiny``) and the arch ``edd_transformer_tiny`` (:mod:`.models`).

Uncertainty-aware generation and scoring are ``python -m edd_fairseq.generate`` and
``python -m edd_fairseq.score``.
"""
import os

# fairseq checkpoints pickle argparse.Namespace objects; torch >= 2.6 loads with weights_only=True by default
# and refuses them. fairseq reads no weights_only flag of its own, so allow full loading for the trusted
# checkpoints this plugin works with (the variable is read at every torch.load; --user-dir is imported before
# any checkpoint is loaded).
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

from . import criterions, models, task  # noqa: E402,F401  (registration side effects)
