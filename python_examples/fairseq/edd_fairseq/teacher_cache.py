"""Teacher outputs computed once and kept on disk, so that later epochs never run the teachers.

A cache holds, for every target token of a dataset split (EOS included, in dataset order), either

* ``"stats"``: the teacher-ensemble statistics of SPEC section 1 — ``mean_probs [V]``, ``mean_log_probs [V]``
  and the five measures — one row of ``2V + 5`` numbers (enough for ``edd_ensemble_kl``,
  ``edd_dirichlet_nll`` and ``edd_proxy_dirichlet_kl``), or
* ``"logits"``: every member's raw logits, one row of ``M * V`` numbers (needed by the logit-space criteria:
  the Laplace loss has no sufficient statistic).

Files: ``{dir}/{split}.{mode}.npy`` (a ``[tokens, width]`` array, read memory-mapped) and
``{dir}/{split}.{mode}.json`` (what it was computed from; it is written last, so a cache whose JSON is
missing or does not match the current teachers, options or data is rebuilt).
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Callable, Dict, Optional

import numpy as np
import torch
from fairseq.data import BaseWrapperDataset
from torch import Tensor

logger = logging.getLogger(__name__)

MODES = ("stats", "logits")
MEASURES = ("total", "data", "mutual_information", "epkl", "rmi")
_NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16}

__all__ = ["TeacherCache", "TeacherCachedDataset", "MODES"]


def _file_signature(path: str) -> Dict[str, object]:
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


class TeacherCache:
    """The on-disk teacher outputs of one split (see the module docstring).

    Args:
        directory: folder of the cache files (created when missing).
        split: dataset split name (``train``, ``valid``, ...).
        mode: ``"stats"`` or ``"logits"``.
        signature: everything the rows depend on (teachers, temperature, smoothing, sizes); a cache built
            with another signature is rebuilt.
        dtype: ``"float32"`` or ``"float16"`` storage.
        temperature: handed to the criterion with cached logits (raw logits do not depend on it).
    """

    def __init__(self, directory: str, split: str, mode: str, signature: Dict[str, object], dtype: str = "float32",
                 temperature: float = 1.0):
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        if dtype not in _NUMPY_DTYPES:
            raise ValueError(f"teacher_cache_dtype: expected one of {tuple(_NUMPY_DTYPES)}, got {dtype!r}")
        self.directory = directory
        self.split = split
        self.mode = mode
        self.dtype = dtype
        self.temperature = float(temperature)
        self.signature = dict(signature, mode=mode, dtype=dtype)
        self.data_path = os.path.join(directory, f"{split}.{mode}.npy")
        self.tmp_path = os.path.join(directory, f"{split}.{mode}.tmp.npy")
        self.meta_path = os.path.join(directory, f"{split}.{mode}.json")
        self._rows: Optional[np.ndarray] = None
        self._offsets: Optional[np.ndarray] = None
        self._lengths: Optional[np.ndarray] = None

    # -- building ------------------------------------------------------------------------------------
    def is_complete(self, ignore=()) -> bool:
        """Whether the files exist and were built with this signature (keys in ``ignore`` aside)."""
        try:
            with open(self.meta_path) as f:
                meta = json.load(f)
        except (OSError, ValueError):
            return False
        built = {k: v for k, v in meta.get("signature", {}).items() if k not in ignore}
        wanted = {k: v for k, v in self.signature.items() if k not in ignore}
        return built == wanted and os.path.exists(self.data_path)

    def build(self, dataset, teacher_logits: Callable[[dict], Tensor], num_members: int, num_classes: int,
              temperature: float, smoothing: float, stats_fn: Callable, max_tokens: int = 4096) -> None:
        """Run the teachers over every sentence of ``dataset`` once and write the rows.

        ``teacher_logits(sample) -> [B, T, M, V]`` runs the ensemble on a collated batch; ``stats_fn`` is
        ``ensemble_stats``.
        """
        os.makedirs(self.directory, exist_ok=True)
        if os.path.exists(self.meta_path):
            os.remove(self.meta_path)
        lengths = np.asarray(dataset.tgt_sizes, dtype=np.int64)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        width = 2 * num_classes + len(MEASURES) if self.mode == "stats" else num_members * num_classes
        rows = np.lib.format.open_memmap(
            self.tmp_path, mode="w+", dtype=_NUMPY_DTYPES[self.dtype],
            shape=(max(int(offsets[-1]), 1), width),
        )
        order = np.argsort(lengths, kind="stable")
        start, done, began = 0, 0, time.time()
        while start < len(order):
            # Batches of similar length up to max_tokens target tokens.
            end = start + 1
            while end < len(order) and (end - start + 1) * lengths[order[end]] <= max_tokens:
                end += 1
            indices = order[start:end]
            sample = dataset.collater([dataset[int(i)] for i in indices])
            logits = teacher_logits(sample)  # [B, T, M, V]
            mask = sample["target"].ne(dataset.tgt_dict.pad())
            if self.mode == "stats":
                stats = stats_fn(logits, temperature=temperature, smoothing=smoothing)
                values = torch.cat([stats.mean_probs, stats.mean_log_probs]
                                   + [getattr(stats, m).unsqueeze(-1) for m in MEASURES], dim=-1)
            else:
                values = logits.flatten(-2)
            values = values[mask].float().cpu().numpy()  # [tokens of the batch, width], row-major order
            ids = sample["id"].cpu().numpy()
            pos = 0
            for i in ids:
                n = int(lengths[i])
                rows[offsets[i]:offsets[i] + n] = values[pos:pos + n]
                pos += n
            if pos != len(values):
                raise RuntimeError(f"teacher cache: {pos} rows placed but the batch has {len(values)} target "
                                   f"tokens (dataset tgt_sizes disagree with the collated targets)")
            done += len(indices)
            start = end
        rows.flush()
        del rows
        os.replace(self.tmp_path, self.data_path)
        with open(self.meta_path, "w") as f:
            json.dump({"signature": self.signature, "num_members": num_members, "num_classes": num_classes,
                       "sentences": int(len(lengths)), "tokens": int(offsets[-1]), "width": width}, f, indent=1)
        logger.info("teacher cache: wrote %s (%d sentences, %d tokens x %d, %s) in %.1fs", self.data_path,
                    done, int(offsets[-1]), width, self.dtype, time.time() - began)

    # -- reading -------------------------------------------------------------------------------------
    def _open(self, lengths) -> None:
        if self._rows is None:
            self._rows = np.load(self.data_path, mmap_mode="r")
            self._lengths = np.asarray(lengths, dtype=np.int64)
            self._offsets = np.zeros(len(self._lengths) + 1, dtype=np.int64)
            np.cumsum(self._lengths, out=self._offsets[1:])
            with open(self.meta_path) as f:
                self.meta = json.load(f)

    def lookup(self, ids: Tensor, target_mask: Tensor, lengths) -> dict:
        """Teacher outputs of a collated batch: ``ids [B]`` (dataset indices), ``target_mask [B, T]``.

        Returns ``{"logits": [B, T, M, V]}`` or ``{"stats": {field: tensor}, "num_members": M}``; padded
        positions hold zeros (the criteria mask them).
        """
        self._open(lengths)
        ids_np = ids.numpy()
        rows = np.concatenate([self._rows[self._offsets[i]:self._offsets[i + 1]] for i in ids_np], axis=0)
        if rows.shape[0] != int(target_mask.sum()):
            raise RuntimeError(f"teacher cache {self.data_path}: {rows.shape[0]} cached rows for a batch with "
                               f"{int(target_mask.sum())} target tokens; delete the cache to rebuild it")
        width = rows.shape[1]
        full = torch.zeros(target_mask.shape + (width,), dtype=torch.float32)
        full[target_mask] = torch.from_numpy(rows.astype(np.float32, copy=False))
        num_members, num_classes = self.meta["num_members"], self.meta["num_classes"]
        if self.mode == "logits":
            return {"logits": full.view(target_mask.shape + (num_members, num_classes)),
                    "temperature": self.temperature}
        v = num_classes
        stats = {"mean_probs": full[..., :v], "mean_log_probs": full[..., v:2 * v]}
        for k, m in enumerate(MEASURES):
            stats[m] = full[..., 2 * v + k]
        return {"stats": stats, "num_members": num_members}


class TeacherCachedDataset(BaseWrapperDataset):
    """A language-pair dataset whose batches carry ``sample["teacher"]`` read from a :class:`TeacherCache`.

    Until :meth:`attach` is called (by the ``edd_distillation`` task once it knows the criterion), it is the
    wrapped dataset unchanged.
    """

    def __init__(self, dataset, split: str):
        super().__init__(dataset)
        self.split = split
        self.cache: Optional[TeacherCache] = None

    def __getattr__(self, name):
        # Attributes of the language-pair dataset (tgt_sizes, tgt_dict, src, ...) read through.
        if name in ("dataset", "split", "cache"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def attach(self, cache: TeacherCache) -> None:
        self.cache = cache

    def collater(self, samples):
        sample = self.dataset.collater(samples)
        if self.cache is not None and len(sample) > 0 and "target" in sample:
            mask = sample["target"].ne(self.dataset.tgt_dict.pad())
            sample["teacher"] = self.cache.lookup(sample["id"], mask, self.dataset.tgt_sizes)
        return sample
