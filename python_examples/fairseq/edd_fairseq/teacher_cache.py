"""Teacher outputs computed once per split and kept on disk (``edd_ext.cache``), so that later epochs and later
runs never run the teachers.

The cache holds, for every target token of a split (EOS included, in dataset order), one record of

* ``"top_k"`` (``--teacher-cache-topk K``, the default K = 64): the compact :class:`edd_ext.TopKEnsembleStats` —
  the K classes of largest ensemble mean probability with their mean probabilities and log-probabilities, the
  tail's mass and mean log-probability, and the five measures (exact over the vocabulary): 8K + 28 bytes per token
  in float16, whatever V. Every statistics-based criterion reads it directly;
* ``"dense"`` (``--teacher-cache-topk 0``): the full :class:`edd_ext.EnsembleStats`, 2V + 5 numbers per token
  (256 KB at V = 32k in float32);
* ``"logits"``: every member's raw logits, M V numbers per token (the logit-space criteria need them).

The cache directory has one sub-directory per split and record kind, ``{dir}/{split}.{kind}[-k{K}]``; its manifest
records the teachers (checkpoint SHA-256 and the dtype they ran in), the options and the fingerprint of the split's
binarised files, and a cache that does not match them is rebuilt. An interrupted build is resumed.
"""
from __future__ import annotations

import glob
import logging
import os
from typing import Callable, List, Optional

import torch
from fairseq.data import BaseWrapperDataset

from edd_ext import cache as C

logger = logging.getLogger(__name__)

__all__ = ["TeacherCachedDataset", "open_or_build", "cache_kind", "data_fingerprint"]


def cache_kind(needs_member_logits: bool, top_k: int) -> str:
    """The record kind a criterion needs: member logits, top-k statistics (top_k > 0) or dense statistics."""
    if needs_member_logits:
        return "logits"
    return "top_k" if top_k > 0 else "dense"


def data_fingerprint(data: str, split: str) -> str:
    """The identity of a split: the SHA-256 of its binarised files (``{split}.*`` in every data directory)."""
    files = sorted(f for path in data.split(os.pathsep) for f in glob.glob(os.path.join(path, f"{split}.*")))
    return C.fingerprint(repr(C.file_identity(f)).encode() for f in files)


def open_or_build(directory: str, split: str, kind: str, dataset, *, top_k: int, temperature: float,
                  smoothing: float, storage_dtype: str, teachers: Optional[List[dict]], fingerprint: str,
                  teacher_logits: Optional[Callable], max_tokens: int) -> C.TeacherCache:
    """The split's cache: opened when it matches (teachers, options and data), else built (or resumed) by running
    ``teacher_logits(sample) -> [B, T, M, V]`` over the split once. With ``teachers=None`` (no checkpoints given)
    a cache built by any teachers with the same options and data is accepted, and a missing one is an error."""
    lengths = [int(n) for n in dataset.tgt_sizes]
    name = f"{split}.{kind}" + (f"-k{top_k}" if kind == "top_k" else "")
    path = os.path.join(directory, name)
    options = dict(kind=kind, top_k=top_k if kind == "top_k" else None, temperature=temperature,
                   smoothing=smoothing if kind != "logits" else None, storage_dtype=storage_dtype)
    if teachers is None:
        try:
            return C.TeacherCache(path, expect=dict(options, lengths=lengths, data_fingerprint=fingerprint))
        except (FileNotFoundError, ValueError) as exc:
            raise ValueError(f"--teacher-paths: no teachers given and the teacher cache for split {split!r} in "
                             f"{directory} cannot be used: {exc}") from exc

    def run(indices):
        sample = dataset.collater([dataset[i] for i in indices])
        row = {i: b for b, i in enumerate(sample["id"].tolist())}  # the collater sorts by source length
        return teacher_logits(sample)[torch.tensor([row[i] for i in indices])]

    logger.info("edd_distillation: teacher cache %s (%s) for split %r", path, kind, split)
    return C.build_cache(path, lengths, run, kind=kind, top_k=top_k if kind == "top_k" else None,
                         temperature=temperature, smoothing=smoothing, storage_dtype=storage_dtype,
                         teachers=teachers, data_fingerprint=fingerprint, shard_size=4096, max_tokens=max_tokens,
                         overwrite=True, progress=True)


class TeacherCachedDataset(BaseWrapperDataset):
    """A language-pair dataset whose batches carry ``sample["teacher"]`` read from an ``edd_ext.cache`` cache.

    Until :meth:`attach` is called (by the ``edd_distillation`` task once it knows the criterion), it is the
    wrapped dataset unchanged.
    """

    def __init__(self, dataset, split: str):
        super().__init__(dataset)
        self.split = split
        self.cache: Optional[C.TeacherCache] = None

    def __getattr__(self, name):
        # Attributes of the language-pair dataset (tgt_sizes, tgt_dict, src, ...) read through.
        if name in ("dataset", "split", "cache"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def attach(self, cache: C.TeacherCache) -> None:
        self.cache = cache

    def collater(self, samples):
        sample = self.dataset.collater(samples)
        if self.cache is None or len(sample) == 0 or "target" not in sample:
            return sample
        target = sample["target"]
        record = self.cache.batch(sample["id"].tolist(), length=target.size(1))
        if self.cache.kind == "logits":
            sample["teacher"] = {"logits": record, "temperature": self.cache.temperature}
        else:
            sample["teacher"] = {"stats": record}
        return sample
