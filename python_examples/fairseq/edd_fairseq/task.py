"""``--task edd_distillation``: translation with a frozen teacher ensemble attached to every batch.

The task is fairseq's ``translation`` task plus teachers. Each training and validation batch gets
``sample["teacher"]``, one of

* ``{"logits": [B, T, M, V], "temperature": T}`` — the M teachers' logits under teacher forcing on the
  batch's reference targets, computed on the fly (``torch.no_grad``, teachers in eval mode, optionally in
  float16/bfloat16 with ``--teacher-dtype``), or read back from the cache;
* ``{"stats": TopKEnsembleStats or EnsembleStats}`` — precomputed ensemble statistics (SPEC sections 1 and 1.1)
  read from the cache, ``[B, T, ...]``.

With ``--teacher-cache-dir DIR`` the teachers run once, in a first pass over each split before its first
batch, and the results are stored in DIR with ``edd_ext.cache`` (the compact top-k statistics,
``--teacher-cache-topk K``, by default K = 64, or the dense statistics with K = 0, for the criteria that need
only statistics; every member's logits for the logit-space criteria); later epochs and later runs read them back
and never load the teachers. Without it the teachers run on every batch.

The teachers must share the student's target dictionary. They are loaded lazily (only when a batch needs
them), so generation and scoring with a student trained by this task never load them.
"""

import logging
import os
from dataclasses import dataclass, field
from typing import List, Optional

import torch
from fairseq import checkpoint_utils
from fairseq import models as fairseq_models
from fairseq.dataclass import ChoiceEnum
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask
from torch import Tensor

from edd_ext import cache as C

from . import teacher_cache
from .teacher_cache import TeacherCachedDataset

logger = logging.getLogger(__name__)

TEACHER_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class DistillationConfig(TranslationConfig):
    teacher_paths: str = field(
        default="", metadata={"help": "colon-separated teacher checkpoints (e.g. a.pt:b.pt:c.pt); required "
                                      "unless every split's teacher cache is complete"})
    teacher_dtype: ChoiceEnum(list(TEACHER_DTYPES)) = field(
        default="float32", metadata={"help": "dtype the teachers run in (float16/bfloat16 halve their memory "
                                             "and time on GPUs; the losses accumulate in float32)"})
    teacher_temperature: float = field(
        default=1.0, metadata={"help": "teacher temperature T: members' probabilities are softmax(u / T)"})
    teacher_smoothing: float = field(
        default=0.0, metadata={"help": "central smoothing of every member's probabilities, (1 - eps) p + eps/V "
                                       "(statistics-based criteria only)"})
    teacher_cache_dir: Optional[str] = field(
        default=None, metadata={"help": "run the teachers once per split and cache their outputs in this folder; "
                                        "later epochs read the cache instead of running them"})
    teacher_cache_topk: int = field(
        default=64, metadata={"help": "statistics-based criteria: cache the compact top-k statistics of this many "
                                      "classes per token (8K + 28 bytes in float16); 0 caches the dense statistics "
                                      "(2V + 5 numbers per token)"})
    teacher_cache_dtype: ChoiceEnum(["float16", "bfloat16", "float32"]) = field(
        default="float16", metadata={"help": "storage dtype of the cached values (top-k indices are int32, the "
                                             "per-token measures float32)"})
    teacher_cache_max_tokens: int = field(
        default=4096, metadata={"help": "target tokens per teacher batch while building the cache"})


@register_task("edd_distillation", dataclass=DistillationConfig)
class DistillationTask(TranslationTask):
    """Translation with a teacher ensemble; see the module docstring."""

    cfg: DistillationConfig

    def __init__(self, cfg: DistillationConfig, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        if not cfg.teacher_temperature > 0:
            raise ValueError(f"--teacher-temperature: expected a positive number, got {cfg.teacher_temperature}")
        if not 0.0 <= cfg.teacher_smoothing < 1.0:
            raise ValueError(f"--teacher-smoothing: expected a number in [0, 1), got {cfg.teacher_smoothing}")
        self.teacher_paths: List[str] = [p for p in (cfg.teacher_paths or "").split(os.pathsep) if p]
        self._teachers: Optional[List[torch.nn.Module]] = None
        self._teacher_format: Optional[str] = None  # "stats" or "logits", set when a criterion is built

    # -- teachers ------------------------------------------------------------------------------------
    @property
    def num_teachers(self) -> int:
        return len(self.teacher_paths)

    def load_teachers(self) -> List[torch.nn.Module]:
        """The teacher models, loaded on first use (eval mode, no gradients, ``--teacher-dtype``)."""
        if self._teachers is not None:
            return self._teachers
        if not self.teacher_paths:
            raise ValueError("--teacher-paths: the edd_distillation task needs teacher checkpoints "
                             "(colon-separated, e.g. --teacher-paths a.pt:b.pt:c.pt), got none")
        dtype = TEACHER_DTYPES[str(self.cfg.teacher_dtype)]
        teachers = []
        for path in self.teacher_paths:
            if not os.path.exists(path):
                raise FileNotFoundError(f"--teacher-paths: no checkpoint at {path}")
            state = checkpoint_utils.load_checkpoint_to_cpu(path)
            cfg = state.get("cfg")
            if cfg is None:
                cfg = convert_namespace_to_omegaconf(state["args"])
            weights = state["model"]
            for key in ("decoder.output_projection.weight", "decoder.embed_out", "decoder.embed_tokens.weight"):
                if key in weights and weights[key].shape[0] != len(self.tgt_dict):
                    raise ValueError(
                        f"--teacher-paths: teacher {path} predicts V={weights[key].shape[0]} classes ({key}) but "
                        f"the target dictionary has {len(self.tgt_dict)}: teachers and student must share it")
            # Build with this task's dictionaries (not the teacher's own task, whose data path may be gone).
            model = fairseq_models.build_model(cfg.model, self, from_checkpoint=True)
            model.load_state_dict(weights, strict=True, model_cfg=cfg.model)
            model.eval().requires_grad_(False).to(dtype)
            teachers.append(model)
        logger.info("edd_distillation: loaded %d teachers (%s) from %s", len(teachers), self.cfg.teacher_dtype,
                    ", ".join(self.teacher_paths))
        self._teachers = teachers
        return teachers

    @torch.no_grad()
    def teacher_logits(self, sample) -> Tensor:
        """``[B, T, M, V]`` logits of the M teachers under teacher forcing on ``sample``'s targets."""
        net_input = sample["net_input"]
        device = net_input["src_tokens"].device
        outputs = []
        for teacher in self.load_teachers():
            if next(teacher.parameters()).device != device:
                teacher.to(device)
            logits, _ = teacher(src_tokens=net_input["src_tokens"], src_lengths=net_input["src_lengths"],
                                prev_output_tokens=net_input["prev_output_tokens"])
            outputs.append(logits)
        return torch.stack(outputs, dim=2)

    def attach_teacher(self, sample):
        """Add ``sample["teacher"]`` (see the module docstring) unless the batch already carries it."""
        if sample is None or len(sample) == 0 or "teacher" in sample:
            return sample
        sample["teacher"] = {"logits": self.teacher_logits(sample), "temperature": self.cfg.teacher_temperature,
                             "smoothing": self.cfg.teacher_smoothing}
        return sample

    def _student_device(self) -> torch.device:
        """Where the teachers run in the caching pass: the student's device once the trainer placed it."""
        student = getattr(self, "_student", None)
        if student is not None:
            for p in student.parameters():
                return p.device
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")

    # -- fairseq hooks -------------------------------------------------------------------------------
    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint=from_checkpoint)
        if self._teachers is None and getattr(self, "_student", None) is None:
            self._student = model  # the first model built is the student (teachers are built directly)
        return model

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)
        if self.cfg.teacher_cache_dir:
            self.datasets[split] = TeacherCachedDataset(self.datasets[split], split)

    def build_criterion(self, cfg, from_checkpoint=False):
        criterion = super().build_criterion(cfg, from_checkpoint=from_checkpoint)
        self._teacher_format = "logits" if getattr(criterion, "needs_member_logits", False) else "stats"
        return criterion

    def _ensure_cache(self, dataset: TeacherCachedDataset) -> None:
        if dataset.cache is not None or self._teacher_format is None:
            return  # already attached, or no criterion built (generation): leave the dataset plain
        cfg = self.cfg
        if cfg.teacher_cache_topk < 0:
            raise ValueError(f"--teacher-cache-topk: expected an int >= 0, got {cfg.teacher_cache_topk}")
        kind = teacher_cache.cache_kind(self._teacher_format == "logits", cfg.teacher_cache_topk)
        teachers = ([dict(C.file_identity(p), dtype=str(cfg.teacher_dtype)) for p in self.teacher_paths]
                    if self.teacher_paths else None)
        device = self._student_device()

        def run(sample):
            sample = {"net_input": {k: v.to(device) for k, v in sample["net_input"].items()}}
            return self.teacher_logits(sample)

        cache = teacher_cache.open_or_build(
            cfg.teacher_cache_dir, dataset.split, kind, dataset.dataset,
            top_k=min(cfg.teacher_cache_topk, len(self.tgt_dict)),  # k = V: every class listed
            temperature=float(cfg.teacher_temperature), smoothing=float(cfg.teacher_smoothing),
            storage_dtype=str(cfg.teacher_cache_dtype), teachers=teachers,
            fingerprint=teacher_cache.data_fingerprint(cfg.data, dataset.split), teacher_logits=run,
            max_tokens=cfg.teacher_cache_max_tokens)
        dataset.attach(cache)

    def get_batch_iterator(self, dataset, *args, **kwargs):
        if isinstance(dataset, TeacherCachedDataset):
            self._ensure_cache(dataset)
        return super().get_batch_iterator(dataset, *args, **kwargs)

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        sample = self.attach_teacher(sample)
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad=ignore_grad)

    def valid_step(self, sample, model, criterion):
        sample = self.attach_teacher(sample)
        return super().valid_step(sample, model, criterion)
