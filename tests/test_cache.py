"""edd_ext.cache: a corpus cache of teacher records written in shards and read back by dataset index; an
interrupted build is detected and resumed (only the missing shards are recomputed), a cache of other teachers,
options or data is rejected with every difference named."""
import json
import os
import pickle

import numpy as np
import pytest
import torch

import edd_ext as E
from edd_ext import cache as C

V, M, K = 50, 3, 8
LENGTHS = [(i * 7) % 10 for i in range(37)]  # 37 sequences of 0..9 tokens, some empty


def teacher_of(index: int, length: int) -> torch.Tensor:
    """The teachers' logits [length, M, V] of sequence `index` (a deterministic function of it)."""
    g = torch.Generator().manual_seed(1000 + index)
    return 3.0 * torch.randn(length, M, V, generator=g)


class Teachers:
    """The callback: padded [B, T, M, V] logits of the sequences asked for; counts its calls, can fail on one."""

    def __init__(self, fail_at=None):
        self.calls, self.sequences, self.fail_at = 0, 0, fail_at

    def __call__(self, indices):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise KeyboardInterrupt("the build is interrupted")
        self.sequences += len(indices)
        width = max(1, max(LENGTHS[i] for i in indices))
        out = torch.full((len(indices), width + 2, M, V), float("nan"))  # padding: never read
        for b, i in enumerate(indices):
            out[b, :LENGTHS[i]] = teacher_of(i, LENGTHS[i])
        return out


def build(directory, teachers=None, **options):
    kw = dict(kind="top_k", top_k=K, storage_dtype="float16", teachers=["t1", "t2", "t3"], data_fingerprint="data-1",
              shard_size=5, max_tokens=24, progress=False)
    kw.update(options)
    return C.build_cache(str(directory), LENGTHS, teachers or Teachers(), **kw)


@pytest.mark.parametrize("storage_dtype", ["float16", "bfloat16", "float32"])
def test_top_k_records_read_back_by_index(tmp_path, storage_dtype):
    cache = build(tmp_path, storage_dtype=storage_dtype)
    dtype = C.STORAGE_DTYPES[storage_dtype]
    assert len(cache) == len(LENGTHS) and cache.num_classes == V and cache.num_members == M and cache.top_k == K
    for i in (0, 1, 6, 13, 36):
        got = cache.sequence(i)
        want = E.ensemble_stats(teacher_of(i, LENGTHS[i]), top_k=K)
        assert isinstance(got, E.TopKEnsembleStats) and got.indices.shape == (LENGTHS[i], K)
        assert got.indices.dtype == torch.int64 and torch.equal(got.indices, want.indices)
        assert got.mean_probs.dtype == dtype and torch.equal(got.mean_probs, want.mean_probs.to(dtype))
        assert torch.equal(got.mean_log_probs, want.mean_log_probs.to(dtype))
        for field in ("tail_mass", "tail_mean_log_prob", "total", "data", "mutual_information", "epkl", "rmi"):
            assert torch.equal(getattr(got, field), getattr(want, field)), field
    # 8k + 28 bytes per token in float16 (int32 indices, two value rows, seven float32 scalars), plus headers
    per_token = 4 * K + 2 * K * dtype.itemsize + 28
    assert per_token <= cache.bytes_per_token < per_token + 150


def test_a_batch_is_padded_and_feeds_the_losses(tmp_path):
    cache = build(tmp_path)
    indices = [3, 0, 9]  # lengths 1, 0, 3
    batch = cache.batch(indices, length=5)
    assert batch.indices.shape == (3, 5, K) and batch.tail_mass.shape == (3, 5)
    assert torch.equal(batch.indices[1, 0], torch.arange(K))  # padding: distinct classes, zero values
    mask = torch.arange(5) < torch.tensor([LENGTHS[i] for i in indices]).unsqueeze(-1)
    assert torch.equal(batch.indices[0, :1], cache.sequence(3).indices)
    z = torch.randn(3, 5, V, requires_grad=True)
    loss = E.proxy_dirichlet_kl(z, batch, mask=mask)
    loss.backward()
    assert torch.isfinite(loss) and (z.grad[~mask] == 0).all()


def test_dense_and_logits_kinds(tmp_path):
    dense = build(tmp_path / "dense", kind="dense", storage_dtype="float32")
    logits = build(tmp_path / "logits", kind="logits", storage_dtype="float32", temperature=2.0)
    u = teacher_of(6, LENGTHS[6])
    want = E.ensemble_stats(u)
    got = dense.sequence(6)
    assert isinstance(got, E.EnsembleStats) and torch.equal(got.mean_probs, want.mean_probs)
    assert torch.equal(got.rmi, want.rmi)
    assert torch.equal(logits.sequence(6), u) and logits.temperature == 2.0
    assert logits.batch([6, 1]).shape == (2, max(LENGTHS[6], LENGTHS[1]), M, V)


def test_logit_top_k_kind(tmp_path):
    cache = build(tmp_path, kind="logit_top_k", top_k=6, teacher_norm="center", storage_dtype="float32",
                  temperature=2.0)
    u = teacher_of(6, LENGTHS[6])
    got, want = cache.sequence(6), E.top_k_logit_targets(u, top_k=6, teacher_norm="center", temperature=2.0)
    assert isinstance(got, E.TopKLogitTargets) and got.teacher_norm == "center" and got.temperature == 2.0
    assert torch.equal(got.indices, want.indices) and torch.equal(got.targets, want.targets.float())
    torch.testing.assert_close(got.tail_mean, want.tail_mean.float())
    torch.testing.assert_close(got.tail_variance, want.tail_variance.float())
    batch = cache.batch([6, 1])
    mask = torch.arange(batch.indices.shape[1]) < torch.tensor([LENGTHS[6], LENGTHS[1]]).unsqueeze(-1)
    loc, rho = torch.randn(2, mask.shape[1], V), torch.zeros(2, mask.shape[1], V)
    loss = E.logit_laplace_nll(loc, rho, batch, teacher_norm="center", temperature=2.0, mask=mask)
    assert torch.isfinite(loss)


def test_an_interrupted_build_is_detected_and_resumed(tmp_path):
    full = Teachers()
    reference = build(tmp_path / "clean", full)
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path / "cache", Teachers(fail_at=6))
    assert not os.path.exists(tmp_path / "cache" / "manifest.json")
    with pytest.raises(C.IncompleteCacheError, match="interrupted"):
        C.TeacherCache(str(tmp_path / "cache"))
    written = sorted(f for f in os.listdir(tmp_path / "cache") if f.endswith(".safetensors"))
    assert 0 < len(written) < 8
    resumed_teachers = Teachers()
    resumed = build(tmp_path / "cache", resumed_teachers)
    assert 0 < resumed_teachers.sequences < full.sequences  # only the missing shards were recomputed
    for i in range(len(LENGTHS)):
        a, b = resumed.sequence(i), reference.sequence(i)
        assert all(torch.equal(x, y) for x, y in zip(a[:-2], b[:-2])), i
    again = Teachers()
    build(tmp_path / "cache", again)  # complete: nothing to do
    assert again.calls == 0


def test_a_truncated_shard_is_recomputed(tmp_path):
    build(tmp_path)
    os.remove(tmp_path / "manifest.json")
    with open(tmp_path / "shard-00002.safetensors", "r+b") as f:
        f.truncate(100)
    teachers = Teachers()
    cache = build(tmp_path, teachers)
    assert teachers.sequences == 5  # shard 2 only
    assert torch.equal(cache.sequence(12).indices, E.ensemble_stats(teacher_of(12, LENGTHS[12]), top_k=K).indices)


def test_a_partial_build_with_other_options_starts_over(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path, Teachers(fail_at=4), top_k=4)
    teachers = Teachers()
    cache = build(tmp_path, teachers)
    assert teachers.sequences == len(LENGTHS) and cache.top_k == K


def test_a_cache_of_other_teachers_options_or_data_is_rejected(tmp_path):
    build(tmp_path)
    with pytest.raises(C.CacheMismatchError, match="top_k: cache has 8, expected 16"):
        build(tmp_path, top_k=16)
    with pytest.raises(C.CacheMismatchError) as err:
        C.TeacherCache(str(tmp_path), expect=dict(top_k=16, temperature=2.0, teachers=["t1"],
                                                  data_fingerprint="data-2"))
    for part in ("top_k: cache has 8, expected 16", "temperature: cache has 1.0, expected 2.0",
                 "teachers: cache has ['t1', 't2', 't3'], expected ['t1']", "data fingerprint"):
        assert part in str(err.value)
    with pytest.raises(C.CacheMismatchError, match="37 sequences"):
        C.TeacherCache(str(tmp_path), expect=dict(lengths=LENGTHS[:-1]))
    with pytest.raises(C.CacheMismatchError, match="lengths differ"):
        C.TeacherCache(str(tmp_path), expect=dict(lengths=LENGTHS[1:] + LENGTHS[:1]))
    C.TeacherCache(str(tmp_path), expect=dict(kind="top_k", top_k=K, lengths=LENGTHS, data_fingerprint="data-1"))
    teachers = Teachers()
    build(tmp_path, teachers, top_k=16, overwrite=True)
    assert teachers.sequences == len(LENGTHS)
    assert json.load(open(tmp_path / "manifest.json"))["options"]["top_k"] == 16


def test_missing_cache_and_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError):
        C.TeacherCache(str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match="kind: expected one of"):
        build(tmp_path, kind="sparse")
    with pytest.raises(ValueError, match="storage_dtype: expected one of"):
        build(tmp_path, storage_dtype="int8")
    with pytest.raises(ValueError, match=r"top_k: expected an int in \[1, V\]"):
        build(tmp_path / "k", top_k=V + 1)
    cache = build(tmp_path / "ok")
    with pytest.raises(IndexError, match=r"index: expected a sequence in \[0, 37\)"):
        cache.sequence(37)


def test_the_cache_pickles_for_dataloader_workers(tmp_path):
    cache = build(tmp_path)
    cache.sequence(3)  # opens a shard
    again = pickle.loads(pickle.dumps(cache))
    assert torch.equal(again.sequence(3).indices, cache.sequence(3).indices)


def test_fingerprint_and_file_identity(tmp_path):
    a = [np.arange(5), np.arange(3)]
    assert C.fingerprint(a) == C.fingerprint([np.arange(5), np.arange(3)])
    assert C.fingerprint(a) != C.fingerprint([np.arange(3), np.arange(5)])
    path = tmp_path / "t.pt"
    path.write_bytes(b"weights")
    ident = C.file_identity(str(path))
    assert ident["name"] == "t.pt" and ident["size"] == 7 and len(ident["sha256"]) == 64
