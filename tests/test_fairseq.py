"""Smoke tests of the fairseq plugin (python_examples/fairseq/edd_fairseq, used as --user-dir).

Skipped when fairseq is not installed (install it with `bash .ci/install_fairseq.sh VENV_PYTHON`). On a tiny
corpus with two briefly trained teachers they check that every criterion trains through the
edd_distillation task (finite, decreasing loss), that the on-disk teacher cache gives what the live teachers
give, and that fairseq-train, uncertainty-aware generation and scoring run end to end.
"""
import json
import math
import os
import sys

import pytest
import torch

import edd_ext as E

fairseq = pytest.importorskip(
    "fairseq", reason="fairseq is not installed (optional extra; install with: bash .ci/install_fairseq.sh PYTHON)"
)

pytestmark = [
    pytest.mark.fairseq,
    # fairseq 0.12 on current hydra, torch and without a GPU: noise that is not ours to fix
    pytest.mark.filterwarnings("ignore:\\s*'config' is validated against ConfigStore:UserWarning"),
    pytest.mark.filterwarnings("ignore:\\s*In 'config'. Usage of deprecated keyword:UserWarning"),
    pytest.mark.filterwarnings("ignore:hydra.experimental:UserWarning"),
    pytest.mark.filterwarnings("ignore:\\s*The strict flag in the compose API:UserWarning"),
    pytest.mark.filterwarnings("ignore:\\s*The version_base parameter:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*pin_memory:UserWarning"),
    pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*torch.cuda.amp.autocast:FutureWarning"),
    pytest.mark.filterwarnings("ignore:Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD:UserWarning"),
]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE_DIR = os.path.join(ROOT, "python_examples", "fairseq")
USER_DIR = os.path.join(EXAMPLE_DIR, "edd_fairseq")
if EXAMPLE_DIR not in sys.path:
    sys.path.insert(0, EXAMPLE_DIR)
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

from fairseq import optim, options, tasks  # noqa: E402
from fairseq.dataclass.utils import convert_namespace_to_omegaconf  # noqa: E402

COMMON = ["--user-dir", USER_DIR, "--cpu", "--share-all-embeddings", "--dropout", "0", "--num-workers", "0",
          "--no-progress-bar", "--seed", "1"]
TINY = ["--encoder-embed-dim", "32", "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "32",
        "--decoder-ffn-embed-dim", "32"]


def _parse(argv, parser=None):
    parser = parser or options.get_training_parser()
    args = options.parse_args_and_arch(parser, input_args=argv)
    return convert_namespace_to_omegaconf(args)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """fairseq's tiny models on two shared cores: a second intra-op thread makes updates up to 4x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny preprocessed corpus (test1 = OOD) and two teachers trained for a few updates."""
    import make_corpus
    from fairseq_cli import preprocess, train

    root = tmp_path_factory.mktemp("fairseq")
    raw, bin_ = str(root / "raw"), str(root / "bin")
    make_corpus.main([raw, "--vocab", "60", "--train", "300", "--test", "16", "--ood", "copy"])
    pre = options.get_preprocessing_parser().parse_args([
        "--source-lang", "src", "--target-lang", "tgt", "--trainpref", f"{raw}/train", "--validpref",
        f"{raw}/valid", "--testpref", f"{raw}/test,{raw}/ood_copy", "--srcdict", f"{raw}/dict.txt",
        "--joined-dictionary", "--destdir", bin_, "--workers", "1"])
    preprocess.main(pre)
    teachers = []
    for seed in (1, 2):
        save = str(root / f"teacher{seed}")
        cfg = _parse([bin_, *COMMON, *TINY, "--arch", "edd_transformer_tiny", "--criterion", "cross_entropy",
                      "--optimizer", "adam", "--lr", "0.01", "--max-tokens", "1024", "--max-update", "25",
                      "--seed", str(seed), "--save-dir", save, "--no-epoch-checkpoints", "--disable-validation",
                      "--no-save-optimizer-state"])
        train.main(cfg)
        teachers.append(os.path.join(save, "checkpoint_last.pt"))
    return {"root": root, "bin": bin_, "teachers": ":".join(teachers)}


def _setup(data, criterion, arch="edd_transformer_tiny", extra=()):
    cfg = _parse([data["bin"], *COMMON, *TINY, "--task", "edd_distillation", "--teacher-paths", data["teachers"],
                  "--arch", arch, "--criterion", *criterion, "--optimizer", "adam", "--lr", "0.01",
                  "--max-tokens", "400", *extra])
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    model = task.build_model(cfg.model)
    crit = task.build_criterion(cfg.criterion)
    return cfg, task, model, crit


def _first_batch(task, max_tokens=400):
    itr = task.get_batch_iterator(dataset=task.dataset("train"), max_tokens=max_tokens, seed=1)
    return next(iter(itr.next_epoch_itr(shuffle=False)))


CRITERIA = [
    (["edd_ensemble_kl"], "edd_transformer_tiny"),
    (["edd_dirichlet_nll", "--model-offset", "1.0"], "edd_transformer_tiny"),
    (["edd_proxy_dirichlet_kl"], "edd_transformer_tiny"),
    (["edd_proxy_dirichlet_kl", "--direction", "forward", "--precision", "epkl", "--max-precision", "1e4"],
     "edd_transformer_tiny"),
    (["edd_logit_gaussian"], "edd_transformer_logit_tiny"),
    (["edd_logit_laplace", "--teacher-norm", "center"], "edd_transformer_logit_tiny"),
]


@pytest.mark.parametrize("criterion,arch", CRITERIA, ids=[" ".join(c) for c, _ in CRITERIA])
def test_criterion_trains(data, criterion, arch):
    cfg, task, model, crit = _setup(data, criterion, arch)
    optimizer = optim.build_optimizer(cfg.optimizer, [p for p in model.parameters() if p.requires_grad])
    sample = _first_batch(task)
    losses = []
    for update in range(8):
        optimizer.zero_grad()
        loss, sample_size, log = task.train_step(sample, model, crit, optimizer, update)
        optimizer.multiply_grads(1.0 / sample_size)
        optimizer.step()
        losses.append(float(loss.detach()) / sample_size)
        for key in ("nll_loss", "ens_nll", "ens_tu", "ens_mi", "ens_log_prec"):
            assert math.isfinite(float(log[key])), (key, log)
    assert all(math.isfinite(x) for x in losses), losses
    assert losses[-1] < losses[0], f"{criterion[0]}: loss did not decrease: {losses}"
    assert sum(losses[-3:]) < sum(losses[:3]), losses
    # Validation logs the student's uncertainties (Monte-Carlo ones for logit-distribution students).
    _, _, log = task.valid_step(sample, model, crit)
    for key in ("st_tu",) + (("st_mi",) if criterion[0] != "edd_ensemble_kl" else ()):
        assert math.isfinite(float(log[key])), (key, log)


def _raise(*args, **kwargs):
    raise RuntimeError("broken on purpose")


def _nan_loss(student, *args, **kwargs):
    return student.sum() * float("nan")


@pytest.mark.parametrize("criterion,arch,name", [
    (["edd_proxy_dirichlet_kl"], "edd_transformer_tiny", "proxy_dirichlet_kl"),
    (["edd_logit_laplace"], "edd_transformer_logit_tiny", "logit_laplace_nll"),
])
def test_a_broken_fused_loss_reaches_the_trainer(data, monkeypatch, criterion, arch, name):
    """The plugin calls the public edd_ext API directly: a loss that raises raises in the criterion, and one that
    returns NaN gives a NaN training loss (which fairseq's trainer then reports), never a silent substitute."""
    import edd_ext

    cfg, task, model, crit = _setup(data, criterion, arch)
    sample = task.attach_teacher(_first_batch(task))
    monkeypatch.setattr(edd_ext, name, _raise)
    with pytest.raises(RuntimeError, match="broken on purpose"):
        crit(model, sample)
    monkeypatch.setattr(edd_ext, name, _nan_loss)
    loss, _, _ = crit(model, sample)
    assert math.isnan(float(loss))


def test_missing_teacher_is_a_clear_error(data):
    cfg, task, model, crit = _setup(data, ["edd_ensemble_kl"])
    sample = _first_batch(task)
    with pytest.raises(ValueError, match="edd_distillation"):
        crit(model, sample)


def test_teacher_vocabulary_mismatch_is_a_clear_error(data, tmp_path):
    state = torch.load(data["teachers"].split(":")[0], weights_only=False)
    for key in ("decoder.output_projection.weight", "decoder.embed_tokens.weight", "encoder.embed_tokens.weight"):
        if key in state["model"]:
            state["model"][key] = state["model"][key][:-8]
    torch.save(state, tmp_path / "small_vocab.pt")
    extra = ["--teacher-paths", str(tmp_path / "small_vocab.pt")]
    cfg, task, model, crit = _setup(data, ["edd_ensemble_kl"], extra=extra)
    with pytest.raises(ValueError, match="must share"):
        task.load_teachers()


def test_logit_criterion_needs_log_scale_head(data):
    cfg, task, model, crit = _setup(data, ["edd_logit_laplace"], "edd_transformer_tiny")
    sample = task.attach_teacher(_first_batch(task))
    with pytest.raises(ValueError, match="edd_transformer_logit"):
        crit(model, sample)


@pytest.mark.parametrize("criterion,arch,kind,extra", [
    (["edd_proxy_dirichlet_kl"], "edd_transformer_tiny", "top_k-k16", ["--teacher-cache-topk", "16"]),
    (["edd_dirichlet_nll"], "edd_transformer_tiny", "dense", ["--teacher-cache-topk", "0"]),
    (["edd_logit_laplace"], "edd_transformer_logit_tiny", "logits", []),
])
def test_teacher_cache_matches_live_teachers(data, tmp_path, criterion, arch, kind, extra):
    cfg, task, model, crit = _setup(data, criterion, arch, ["--teacher-cache-dir", str(tmp_path), *extra])
    cached = _first_batch(task)  # the first pass runs here and writes the cache
    assert os.path.exists(tmp_path / f"train.{kind}" / "manifest.json")
    teacher = cached["teacher"]
    live = task.teacher_logits(cached)
    mask = cached["target"].ne(task.target_dictionary.pad())
    tol = dict(atol=2e-3, rtol=2e-3)  # float16 storage
    if kind == "logits":
        torch.testing.assert_close(teacher["logits"][mask].float(), live[mask], **tol)
    else:
        stats = teacher["stats"]
        expected = E.ensemble_stats(live, top_k=16 if kind.startswith("top_k") else None)
        assert isinstance(stats, type(expected))
        for field in ("total", "mutual_information", "rmi", "epkl"):
            torch.testing.assert_close(getattr(stats, field)[mask], getattr(expected, field)[mask], atol=2e-4,
                                       rtol=1e-4, msg=field)
        z = torch.randn(*mask.shape, len(task.target_dictionary), dtype=torch.float64)
        for loss in (E.proxy_dirichlet_kl, E.ensemble_kl, E.dirichlet_nll):
            torch.testing.assert_close(loss(z, stats, mask=mask), loss(z, expected, mask=mask), **tol)
    # Later runs read the cache without loading the teachers, also when they are not given at all.
    for again_extra in ([], ["--teacher-paths", ""]):
        cfg2, task2, _, _ = _setup(data, criterion, arch, ["--teacher-cache-dir", str(tmp_path), *extra,
                                                           *again_extra])
        again = _first_batch(task2)
        assert task2._teachers is None
        assert torch.equal(again["target"], cached["target"])


def test_a_cache_with_other_options_is_rebuilt_or_refused(data, tmp_path):
    extra = ["--teacher-cache-dir", str(tmp_path), "--teacher-cache-topk", "8"]
    _, task, _, _ = _setup(data, ["edd_ensemble_kl"], extra=extra)
    _first_batch(task)
    manifest = tmp_path / "train.top_k-k8" / "manifest.json"
    built = manifest.stat().st_mtime_ns
    # other teacher options: the same directory is rebuilt
    _, task, _, _ = _setup(data, ["edd_ensemble_kl"], extra=extra + ["--teacher-temperature", "2.0"])
    sample = _first_batch(task)
    assert manifest.stat().st_mtime_ns != built and task._teachers is not None
    assert torch.isfinite(sample["teacher"]["stats"].rmi).all()
    # no teachers and a cache of other options: a clear error
    with pytest.raises(ValueError, match="no teachers given and the teacher cache .* temperature: cache has 2.0, "
                                         "expected 3.0"):
        _, task, _, _ = _setup(data, ["edd_ensemble_kl"], extra=extra + ["--teacher-temperature", "3.0",
                                                                         "--teacher-paths", ""])
        _first_batch(task)


def test_teachers_in_bfloat16(data):
    cfg, task, model, crit = _setup(data, ["edd_ensemble_kl"], extra=["--teacher-dtype", "bfloat16"])
    sample = _first_batch(task)
    logits = task.teacher_logits(sample)
    assert logits.dtype == torch.bfloat16 and logits.dim() == 4 and logits.size(2) == 2
    loss, _, log = crit(model, task.attach_teacher(sample))
    assert torch.isfinite(loss)


def test_train_generate_score_end_to_end(data, tmp_path):
    """fairseq-train with the plugin (cached teachers), then generation with uncertainties and scoring."""
    from fairseq_cli import train

    from edd_fairseq import generate, score

    student = str(tmp_path / "student")
    cfg = _parse([data["bin"], *COMMON, *TINY, "--task", "edd_distillation", "--teacher-paths", data["teachers"],
                  "--teacher-cache-dir", str(tmp_path / "cache"), "--arch", "edd_transformer_logit_tiny",
                  "--criterion", "edd_logit_laplace", "--optimizer", "adam", "--lr", "0.005", "--max-tokens",
                  "1024", "--max-update", "6", "--save-dir", student, "--no-epoch-checkpoints",
                  "--no-save-optimizer-state"])
    train.main(cfg)
    checkpoint = os.path.join(student, "checkpoint_last.pt")
    assert os.path.exists(checkpoint)

    gen = [data["bin"], "--user-dir", USER_DIR, "--gen-subset", "test,test1", "--beam", "2", "--nbest", "2",
           "--max-len-a", "1", "--max-len-b", "5", "--batch-size", "8", "--cpu", "--num-workers", "0",
           "--edd-samples", "4"]
    out = {"ensemble": str(tmp_path / "ens"), "laplace": str(tmp_path / "laplace")}
    generate.main(gen + ["--path", data["teachers"], "--results-path", out["ensemble"]])
    generate.main(gen + ["--path", checkpoint, "--results-path", out["laplace"]])

    for name, kind in (("ensemble", "ensemble"), ("laplace", "logit-laplace")):
        with open(os.path.join(out[name], "uncertainty-test.jsonl")) as f:
            records = [json.loads(line) for line in f]
        assert len(records) == 16 and [r["id"] for r in records] == list(range(16))
        for r in records:
            assert r["kind"] == kind
            assert set(r["sequence"]) == {"pe", "ep", "tu", "du", "mi", "epkl", "rmi"}
            assert all(math.isfinite(v) for v in list(r["sequence"].values()) + list(r["nbest"].values()))
            assert len(r["token"]["tu"]) == len(r["hyp"].split()) + 1  # EOS included
        with open(os.path.join(out[name], "generate-test1.txt")) as f:
            text = f.read()
        assert "\nU-0\t" in text and "\nMI-0\t" in text and "\nN-0\t" in text

    results = score.main(["--system", f"ensemble={out['ensemble']}", "--system", f"laplace={out['laplace']}",
                          "--id", "test", "--ood", "copy=test1", "--json", str(tmp_path / "scores.json")])
    for name in ("ensemble", "laplace"):
        r = results[name]
        assert 0.0 <= r["bleu"] <= 100.0
        assert 0.0 <= r["measures"]["mi"]["auroc_copy"] <= 100.0
        assert "mi@nbest" in r["measures"]
    assert json.load(open(tmp_path / "scores.json"))["ensemble"]["kind"] == "ensemble"
