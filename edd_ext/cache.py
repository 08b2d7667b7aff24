"""On-disk corpus caches of teacher statistics, for offline distillation (SPEC section 1.1).

Running M teachers at every student step costs M forward passes per step; a cache runs them once per corpus.
:func:`build_cache` asks a callback for the teachers' logits of a batch of sequences, reduces them with
:func:`edd_ext.ensemble_stats` and writes one record per target token; :class:`TeacherCache` reads the records
of any sequences back by dataset index, without loading the rest.

Kinds of record, per target token (``kind``):

* ``"top_k"``: :class:`~edd_ext.TopKEnsembleStats` — the k classes of largest ensemble mean probability (int32),
  their mean probabilities and mean log-probabilities (in ``storage_dtype``), and seven float32 scalars (the tail
  mass, the tail mean log-probability and the five measures, which stay float32: the proxy target's precision is
  (V - 1) / (2 RMI), and RMI is often below float16's normal range). 4k + 2 * 2k + 28 bytes in float16: 540 B at
  k = 64. Read by every categorical / Dirichlet loss directly;
* ``"dense"``: :class:`~edd_ext.EnsembleStats` — 2V values and the five measures (256 KB at V = 32k in float32);
* ``"logits"``: every member's raw logits, M V values (the logit-space losses need them);
* ``"logit_top_k"``: :class:`~edd_ext.TopKLogitTargets`, the compact (approximate) form of the logit-space losses'
  targets (``edd_ext.logit_top_k``): k int32 indices, M k targets in ``storage_dtype``, M + 1 float32 tail numbers.

A cache directory holds

* ``shard-00000.safetensors``, ...: shard s has the records of sequences [s * shard_size, (s + 1) * shard_size)
  as flat arrays over their tokens, and those sequences' lengths. A shard is written whole under a temporary
  name and renamed, so a shard file is either complete or absent;
* ``build.json``: the options of the build, written first; every shard also carries their hash;
* ``manifest.json``: what the cache was computed from (the teachers' identities, k, temperature, smoothing,
  storage dtype, the data's fingerprint and size, the shards), written **last**. A directory without it is an
  interrupted build: :func:`build_cache` resumes it (keeping the shards of the same options, recomputing the
  missing ones) and :class:`TeacherCache` refuses to read it.

Why safetensors rather than bare numpy memmaps: the dtypes the cache needs are native to it and recorded in the
file (numpy has no bfloat16); a shard is one immutable file written atomically, so an interrupted build never
leaves a half-filled array that reads as valid zeros (a preallocated memmap does); reading never unpickles
anything, and other frameworks read the files as they are. Shards are written with ``safetensors`` and read by
memory-mapping them along the format's documented layout (:func:`_map_safetensors`), so that one sequence's rows
are views of the map: reading a batch touches only its rows and copies them once, into the batch.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ._validation import check_choice, check_stats_options
from ._version import __version__
from .logit_top_k import top_k_logit_targets
from .stats import ensemble_stats
from .types import MEASURE_NAMES, EnsembleStats, TopKEnsembleStats, TopKLogitTargets

__all__ = ["build_cache", "TeacherCache", "CacheMismatchError", "IncompleteCacheError", "file_identity",
           "fingerprint", "KINDS", "STORAGE_DTYPES"]

KINDS = ("top_k", "dense", "logits", "logit_top_k")
_TOP_K_KINDS = ("top_k", "logit_top_k")
STORAGE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
MANIFEST, BUILD = "manifest.json", "build.json"
FORMAT = 1
_TOPK_SCALARS = ("tail_mass", "tail_mean_log_prob") + MEASURE_NAMES

Record = Union[TopKEnsembleStats, EnsembleStats, TopKLogitTargets, Tensor]


class CacheMismatchError(ValueError):
    """The cache was computed from other teachers, options or data than the ones asked for."""


class IncompleteCacheError(ValueError):
    """The cache directory holds an interrupted build (no manifest)."""


def file_identity(path: str) -> Dict[str, object]:
    """A teacher's identity for the manifest: the file's name, size and SHA-256 of its content."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return {"name": os.path.basename(path), "size": os.path.getsize(path), "sha256": digest.hexdigest()}


def fingerprint(arrays: Iterable[Union[np.ndarray, Tensor, bytes]]) -> str:
    """SHA-256 of a sequence of arrays (their dtype, shape and bytes) or byte strings: the data's identity."""
    digest = hashlib.sha256()
    for a in arrays:
        if isinstance(a, bytes):
            digest.update(a)
            continue
        a = np.ascontiguousarray(a.numpy() if isinstance(a, Tensor) else a)
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def _options(kind: str, top_k: Optional[int], temperature: float, smoothing: float, teacher_norm: str,
             storage_dtype: str, teachers: Sequence[object], data_fingerprint: str, lengths: np.ndarray,
             shard_size: int) -> dict:
    """Everything the records depend on (the build.json, and the manifest without its completion fields)."""
    logit_kind = kind in ("logits", "logit_top_k")
    return {"format": FORMAT, "kind": kind, "top_k": top_k if kind in _TOP_K_KINDS else None,
            "temperature": float(temperature), "smoothing": None if logit_kind else float(smoothing),
            "teacher_norm": teacher_norm if kind == "logit_top_k" else None,
            "storage_dtype": storage_dtype, "index_dtype": "int32" if kind in _TOP_K_KINDS else None,
            "teachers": list(teachers), "data": {"fingerprint": data_fingerprint, "sequences": int(len(lengths)),
                                                 "tokens": int(lengths.sum()),
                                                 "lengths_sha256": fingerprint([lengths.astype(np.int64)])},
            "shard_size": int(shard_size)}


def _options_hash(options: dict) -> str:
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()


def _shard_name(s: int) -> str:
    return f"shard-{s:05d}.safetensors"


def _write_json(path: str, value: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _fields(kind: str, stats_or_logits, dtype: torch.dtype) -> Dict[str, Tensor]:
    """The stored arrays of [tokens] records."""
    if kind == "logits":
        return {"logits": stats_or_logits.to(dtype)}
    s = stats_or_logits
    if kind == "logit_top_k":
        tail = torch.cat([s.tail_mean.float(), s.tail_variance.float().unsqueeze(-1)], -1)
        return {"indices": s.indices.to(torch.int32), "targets": s.targets.to(dtype), "tail": tail}
    if kind == "top_k":
        scalars = torch.stack([getattr(s, f).float() for f in _TOPK_SCALARS], -1)
        return {"indices": s.indices.to(torch.int32), "mean_probs": s.mean_probs.to(dtype),
                "mean_log_probs": s.mean_log_probs.to(dtype), "scalars": scalars}
    measures = torch.stack([getattr(s, f).float() for f in MEASURE_NAMES], -1)
    return {"mean_probs": s.mean_probs.to(dtype), "mean_log_probs": s.mean_log_probs.to(dtype), "measures": measures}


def build_cache(directory: str, lengths: Sequence[int], teacher_logits: Callable[[List[int]], Tensor], *,
                kind: str = "top_k", top_k: Optional[int] = 64, temperature: float = 1.0, smoothing: float = 0.0,
                teacher_norm: str = "log_softmax", storage_dtype: str = "float16", teachers: Sequence[object] = (),
                data_fingerprint: str = "", shard_size: int = 1024, max_tokens: int = 4096, overwrite: bool = False,
                progress: bool = True) -> TeacherCache:
    """Compute and write the teacher records of a corpus (see the module docstring), or resume an interrupted
    build; returns the opened cache.

    Args:
        directory: the cache directory (created when missing).
        lengths: ``[N]`` the number of target tokens of every sequence, in dataset order.
        teacher_logits: ``fn(indices) -> [B, T, M, V]`` the teachers' logits for the sequences ``indices`` (a list
            of dataset indices), row b holding sequence ``indices[b]``'s ``lengths[indices[b]]`` tokens first
            (later positions, padding, are ignored). Called under ``torch.no_grad``.
        kind: ``"top_k"``, ``"dense"``, ``"logits"`` or ``"logit_top_k"``.
        top_k: k of the ``"top_k"`` and ``"logit_top_k"`` records.
        temperature, smoothing: passed to :func:`~edd_ext.ensemble_stats` (``"logits"`` stores raw logits and
            records the temperature for the reader; ``"logit_top_k"`` normalises with it and ``teacher_norm``).
        storage_dtype: ``"float16"``, ``"bfloat16"`` or ``"float32"`` for the values (indices are int32, the
            per-token scalars float32).
        teachers: the teachers' identities (e.g. :func:`file_identity` of each checkpoint), JSON-serialisable.
        data_fingerprint: the data's identity (e.g. :func:`fingerprint` of its token arrays).
        shard_size: sequences per shard file.
        max_tokens: padded target tokens per teacher call (sequences of similar length are batched together).
        overwrite: replace a complete cache built with other options (else that is a :class:`CacheMismatchError`).
        progress: a tqdm bar over the tokens.
    """
    from tqdm.auto import tqdm

    check_choice("kind", kind, KINDS)
    check_choice("storage_dtype", storage_dtype, tuple(STORAGE_DTYPES))
    check_stats_options(temperature, smoothing)
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size: expected an int >= 1, got {shard_size!r}")
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.ndim != 1 or (lengths < 0).any():
        raise ValueError(f"lengths: expected [N] non-negative token counts, got shape {lengths.shape}")
    options = _options(kind, top_k, temperature, smoothing, teacher_norm, storage_dtype, teachers, data_fingerprint,
                       lengths, shard_size)
    key = _options_hash(options)
    os.makedirs(directory, exist_ok=True)
    manifest = _read_json(os.path.join(directory, MANIFEST))
    if manifest is not None:
        if manifest.get("options") == options:
            return TeacherCache(directory)
        if not overwrite:
            raise CacheMismatchError(f"{directory}: a complete cache built with other options or data is there "
                                     f"({_differences(manifest.get('options', {}), options)}); pass overwrite=True "
                                     "to replace it")
    if manifest is not None or _read_json(os.path.join(directory, BUILD)) != options:
        _clear(directory)  # another build's shards: start over
    _write_json(os.path.join(directory, BUILD), options)

    dtype = STORAGE_DTYPES[storage_dtype]
    num_shards = max(1, -(-len(lengths) // shard_size))
    todo = [s for s in range(num_shards) if _shard_key(os.path.join(directory, _shard_name(s))) != key]
    bar = tqdm(total=int(sum(lengths[s * shard_size:(s + 1) * shard_size].sum() for s in todo)), unit="tok",
               desc=f"teacher cache ({kind})", disable=not progress, dynamic_ncols=True)
    shape_info: Dict[str, int] = {}
    for s in todo:
        first = s * shard_size
        shard_lengths = lengths[first:first + shard_size]
        offsets = np.concatenate([[0], np.cumsum(shard_lengths)])
        parts: Dict[str, Optional[Tensor]] = {}
        order = np.argsort(shard_lengths, kind="stable")
        start = 0
        while start < len(order):
            end = start + 1
            while end < len(order) and (end - start + 1) * max(1, shard_lengths[order[end]]) <= max_tokens:
                end += 1
            rows = order[start:end]
            with torch.no_grad():
                logits = teacher_logits([int(first + r) for r in rows])
                shape_info.update(num_members=int(logits.shape[-2]), num_classes=int(logits.shape[-1]))
                if kind == "logits":
                    record = logits
                elif kind == "logit_top_k":
                    record = top_k_logit_targets(logits, top_k=top_k, teacher_norm=teacher_norm,
                                                 temperature=temperature)
                else:
                    record = ensemble_stats(logits, temperature=temperature, smoothing=smoothing,
                                            top_k=top_k if kind == "top_k" else None)
                fields = _fields(kind, record, dtype)
            for b, r in enumerate(rows):
                n = int(shard_lengths[r])
                if logits.shape[1] < n:
                    raise ValueError(f"teacher_logits: sequence {first + r} has {n} tokens but its row of the "
                                     f"batch has {logits.shape[1]} positions")
                for name, value in fields.items():
                    if name not in parts:
                        parts[name] = torch.empty((int(offsets[-1]),) + tuple(value.shape[2:]), dtype=value.dtype)
                    parts[name][offsets[r]:offsets[r] + n] = value[b, :n].cpu()
            bar.update(int(shard_lengths[rows].sum()))
            start = end
        if not parts:  # a shard of empty sequences
            parts = {"empty": torch.zeros(0)}
        _write_shard(os.path.join(directory, _shard_name(s)), parts, shard_lengths, key, shape_info)
    bar.close()
    if not shape_info:  # every shard was there already: read the shapes back
        shape_info = _shape_from_shard(os.path.join(directory, _shard_name(0)))
    manifest = {"options": options, "num_shards": num_shards, "edd_ext_version": __version__, **shape_info}
    _write_json(os.path.join(directory, MANIFEST), manifest)  # last: the cache is complete
    return TeacherCache(directory)


def _clear(directory: str) -> None:
    for name in os.listdir(directory):
        if name in (MANIFEST, BUILD) or (name.startswith("shard-") and ".safetensors" in name):
            os.remove(os.path.join(directory, name))


def _write_shard(path: str, parts: Dict[str, Tensor], lengths: np.ndarray, key: str, shape: dict) -> None:
    from safetensors.torch import save_file

    tensors = {name: t.contiguous() for name, t in parts.items()}
    tensors["lengths"] = torch.from_numpy(lengths.astype(np.int64))
    tmp = path + ".tmp"
    save_file(tensors, tmp, metadata={"build": key, "shape": json.dumps(shape)})
    os.replace(tmp, path)


def _shard_key(path: str) -> Optional[str]:
    """The build hash a complete shard file carries (None when it is absent or unreadable)."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return (f.metadata() or {}).get("build")
    except Exception:  # a missing or truncated file: recompute it
        return None


def _shape_from_shard(path: str) -> Dict[str, int]:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return json.loads((f.metadata() or {}).get("shape") or "{}")


def _differences(got: dict, want: dict) -> str:
    keys = sorted(set(got) | set(want))
    return "; ".join(f"{k}: cache has {got.get(k)!r}, expected {want.get(k)!r}" for k in keys
                     if got.get(k) != want.get(k)) or "none"


class TeacherCache:
    """A complete cache directory (see the module docstring), read by dataset index.

    Args:
        directory: the cache directory.
        expect: the options the caller needs (any of ``kind``, ``top_k``, ``temperature``, ``smoothing``,
            ``teacher_norm``, ``storage_dtype``, ``teachers``, ``data_fingerprint``, ``lengths``); a cache built
            otherwise raises :class:`CacheMismatchError` naming every difference. ``lengths`` (``[N]`` token counts)
            checks the sequences one by one.

    Raises:
        FileNotFoundError: no cache there. IncompleteCacheError: an interrupted build (no manifest).

    Records: :meth:`sequence` gives sequence i's records with a leading ``[L_i]`` axis, :meth:`batch` a padded
    ``[B, T]`` batch: :class:`~edd_ext.TopKEnsembleStats` (int64 indices, values in the storage dtype, float32
    scalars), :class:`~edd_ext.EnsembleStats`, or member logits ``[..., M, V]``. A shard file is memory-mapped on
    first use and only the rows asked for are read; :meth:`sequence` returns views of the map (copy-on-write:
    writing to them never reaches the file).
    """

    def __init__(self, directory: str, *, expect: Optional[dict] = None) -> None:
        self.directory = directory
        manifest = _read_json(os.path.join(directory, MANIFEST))
        if manifest is None:
            if _read_json(os.path.join(directory, BUILD)) is not None:
                raise IncompleteCacheError(f"{directory}: an interrupted cache build (no {MANIFEST}); run the build "
                                           "again to resume it")
            raise FileNotFoundError(f"{directory}: no teacher cache ({MANIFEST} not found)")
        self.manifest = manifest
        self.options = manifest["options"]
        self.kind: str = self.options["kind"]
        self.top_k: Optional[int] = self.options["top_k"]
        self.num_classes: int = int(manifest.get("num_classes", 0))
        self.num_members: int = int(manifest.get("num_members", 0))
        self.temperature: float = self.options["temperature"]
        self._shards: Dict[int, tuple] = {}
        if expect:
            self.check(**expect)

    def __len__(self) -> int:
        return int(self.options["data"]["sequences"])

    @property
    def bytes_per_token(self) -> float:
        """Stored bytes per target token (all shards over all tokens)."""
        total = sum(os.path.getsize(os.path.join(self.directory, _shard_name(s)))
                    for s in range(self.manifest["num_shards"]))
        return total / max(1, self.options["data"]["tokens"])

    def check(self, *, lengths: Optional[Sequence[int]] = None, data_fingerprint: Optional[str] = None,
              **options) -> None:
        """Raise :class:`CacheMismatchError` unless the cache was built with these options and data."""
        problems = []
        unknown = set(options) - {"kind", "top_k", "temperature", "smoothing", "teacher_norm", "storage_dtype",
                                  "teachers"}
        if unknown:
            raise ValueError(f"expect: unknown option(s) {sorted(unknown)}")
        for name, want in options.items():
            got = self.options.get(name)
            if name == "teachers":
                want = list(want)
            if name in ("temperature", "smoothing") and want is not None:
                want = float(want)
            if got != want:
                problems.append(f"{name}: cache has {got!r}, expected {want!r}")
        data = self.options["data"]
        if data_fingerprint is not None and data["fingerprint"] != data_fingerprint:
            problems.append(f"data fingerprint: cache has {data['fingerprint']!r}, expected {data_fingerprint!r}")
        if lengths is not None:
            lengths = np.asarray(lengths, dtype=np.int64)
            if len(lengths) != data["sequences"] or int(lengths.sum()) != data["tokens"]:
                problems.append(f"data: cache has {data['sequences']} sequences of {data['tokens']} tokens, the "
                                f"data {len(lengths)} of {int(lengths.sum())}")
            elif fingerprint([lengths]) != data["lengths_sha256"]:
                problems.append("data: the sequences' lengths differ from the cache's")
        if problems:
            raise CacheMismatchError(f"{self.directory}: the teacher cache does not match: " + "; ".join(problems))

    # -- reading ---------------------------------------------------------------------------------------------
    def _shard(self, s: int):
        if s not in self._shards:
            if not 0 <= s < self.manifest["num_shards"]:
                raise IndexError(f"shard {s} of a cache with {self.manifest['num_shards']}")
            tensors = _map_safetensors(os.path.join(self.directory, _shard_name(s)))
            offsets = np.concatenate([[0], np.cumsum(tensors.pop("lengths").numpy())])
            tensors.pop("empty", None)
            self._shards[s] = (tensors, offsets)
        return self._shards[s]

    def _rows(self, index: int) -> Dict[str, Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"index: expected a sequence in [0, {len(self)}), got {index}")
        s, r = divmod(int(index), self.options["shard_size"])
        tensors, offsets = self._shard(s)
        a, b = int(offsets[r]), int(offsets[r + 1])
        return {name: t[a:b] for name, t in tensors.items()}

    def _record(self, fields: Dict[str, Tensor]) -> Record:
        if self.kind == "logits":
            return fields["logits"]
        if self.kind == "logit_top_k":
            tail = fields["tail"]
            return TopKLogitTargets(fields["indices"].long(), fields["targets"], tail[..., :-1], tail[..., -1],
                                    num_classes=self.num_classes, teacher_norm=self.options["teacher_norm"],
                                    temperature=self.temperature)
        if self.kind == "top_k":
            scalars = fields["scalars"].unbind(-1)
            return TopKEnsembleStats(fields["indices"].long(), fields["mean_probs"], fields["mean_log_probs"],
                                     *scalars, num_classes=self.num_classes, num_members=self.num_members)
        return EnsembleStats(fields["mean_probs"], fields["mean_log_probs"], *fields["measures"].unbind(-1),
                             num_members=self.num_members)

    def length(self, index: int) -> int:
        s, r = divmod(int(index), self.options["shard_size"])
        offsets = self._shard(s)[1]
        return int(offsets[r + 1] - offsets[r])

    def sequence(self, index: int) -> Record:
        """The records of sequence ``index``: leading axis ``[L]`` (its target tokens)."""
        return self._record(self._rows(index))

    def batch(self, indices: Sequence[int], length: Optional[int] = None) -> Record:
        """The records of the sequences ``indices`` as a padded batch ``[B, T]`` (T = ``length``, at least the
        longest). Padded positions hold harmless values (top-k: the classes 0..k-1 with zero values) for the
        caller's mask to drop."""
        from torch.nn.utils.rnn import pad_sequence

        rows = [self._rows(i) for i in indices]
        if not rows:
            raise ValueError("indices: expected at least one sequence, got none")
        lengths = torch.tensor([next(iter(r.values())).shape[0] for r in rows])
        width = max(int(length or 0), int(lengths.max()))
        padded = torch.arange(width).unsqueeze(0) >= lengths.unsqueeze(1)  # [B, T]
        out: Dict[str, Tensor] = {}
        for name in rows[0]:
            seqs = [r[name] for r in rows]
            seqs.append(seqs[0].new_zeros((width,) + seqs[0].shape[1:]))  # pads to the width; dropped below
            full = pad_sequence(seqs, batch_first=True)[:-1]  # one allocation per field
            if name == "indices":  # int64 (the losses' index type) in the same pass
                full = torch.where(padded.unsqueeze(-1), torch.arange(full.shape[-1]), full)
            out[name] = full
        return self._record(out)

    def __getstate__(self):  # the memory maps do not pickle (DataLoader workers map the shards again)
        state = dict(self.__dict__)
        state["_shards"] = {}
        return state


_SAFETENSORS_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
                       "I32": torch.int32, "I64": torch.int64}


def _map_safetensors(path: str) -> Dict[str, Tensor]:
    """The tensors of a safetensors file as views of a (copy-on-write) memory map of it: nothing is read until a slice
    is used, and slicing a sequence's rows costs no copy. The file's documented layout: an 8-byte little-endian
    header size, a JSON header of each tensor's dtype, shape and byte range, then the data."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    data = np.memmap(path, dtype=np.uint8, mode="c", offset=8 + size, shape=(end,)) if end else np.zeros(0, np.uint8)
    out = {}
    for name, info in header.items():
        a, b = info["data_offsets"]
        out[name] = torch.from_numpy(data[a:b]).view(_SAFETENSORS_DTYPES[info["dtype"]]).reshape(info["shape"])
    return out
