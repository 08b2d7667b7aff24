"""edd_ext.integrations.transformers: the trainer, the log-scale head, the output-layer access behind the
fused linear path, generate_with_uncertainty and the errors a user meets.

Tiny models (1 layer, d_model 16) built from configurations and a word-level tokenizer trained here (no
download). Oracles: the models' own logits (for the hidden-state path), ``edd_ext.reference`` (the plain
PyTorch definitions) for losses and measures, and decoding loops written out in the tests. The two-process
tests are in tests/test_distributed.py.
"""
import copy
import math
import os
import re
import sys

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (optional extra: pip install \"edd_ext[transformers]\")")

from transformers import (  # noqa: E402
    AutoModelForSeq2SeqLM,
    BartConfig,
    BartForConditionalGeneration,
    DataCollatorForSeq2Seq,
    MarianMTModel,
    Seq2SeqTrainingArguments,
    T5ForConditionalGeneration,
)

import edd_ext as E  # noqa: E402
from edd_ext import reference as R  # noqa: E402
from edd_ext.integrations.transformers import (  # noqa: E402
    DistillationObjective,
    EnsembleDistillationTrainer,
    EnsembleForGeneration,
    LogScaleHeadConfig,
    LogScaleHeadForSeq2SeqLM,
    generate_with_uncertainty,
)
from edd_ext.integrations.transformers.generation import _scored_mask  # noqa: E402
from edd_ext.integrations.transformers.objective import LOSSES, linear_losses_available  # noqa: E402
from edd_ext.integrations.transformers.output_layer import hidden_states_only, output_layer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python_examples", "transformers"))
from toy_seq2seq import encode_pairs, marian_config, t5_config, word_tokenizer  # noqa: E402

WORDS = [f"w{i}" for i in range(24)]
SOURCES = [" ".join(WORDS[(5 * i + 3 * j) % 24] for j in range(1 + i % 6)) for i in range(16)]
TARGETS = [" ".join(WORDS[(7 * i + j) % 24] for j in range(1 + (3 * i) % 5)) for i in range(16)]


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer(SOURCES + TARGETS)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: more threads only contend
    yield
    torch.set_num_threads(threads)


def make(tok, arch="marian", seed=0):
    torch.manual_seed(seed)
    if arch == "marian":
        return MarianMTModel(marian_config(tok, d_model=16, ffn=32))
    if arch == "t5":
        return T5ForConditionalGeneration(t5_config(tok, d_model=16, ffn=32))
    special = dict(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                   decoder_start_token_id=tok.pad_token_id, bos_token_id=tok.pad_token_id, forced_eos_token_id=None)
    return BartForConditionalGeneration(BartConfig(
        vocab_size=len(tok), d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64, dropout=0.0,
        **special))


def batch_of(tok, model, n=4, start=0):
    data = encode_pairs(tok, SOURCES[start:start + n], TARGETS[start:start + n])
    return DataCollatorForSeq2Seq(tok, model=model)(data)


def forward_inputs(batch):
    return {k: batch[k] for k in ("input_ids", "attention_mask", "decoder_input_ids")}


def training_args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), use_cpu=True, report_to=[], max_steps=2, learning_rate=1e-2,
                lr_scheduler_type="constant", per_device_train_batch_size=4, train_sampling_strategy="sequential",
                logging_steps=1, save_strategy="no", remove_unused_columns=False, disable_tqdm=True, seed=0)
    return Seq2SeqTrainingArguments(**{**base, **kw})


def trainer_for(tok, student, teachers, tmp_path, **kw):
    args = kw.pop("args", None) or training_args(tmp_path)
    return EnsembleDistillationTrainer(model=student, args=args, teachers=teachers,
                                       train_dataset=encode_pairs(tok, SOURCES, TARGETS),
                                       data_collator=DataCollatorForSeq2Seq(tok, model=student), processing_class=tok,
                                       **kw)


def test_installed_transformers_is_the_pinned_version():
    """CI installs the version setup.py's [transformers] extra pins: the two must not drift apart."""
    with open(os.path.join(ROOT, "setup.py")) as f:
        pinned = re.search(r'"transformers==([^"]+)"', f.read()).group(1)
    assert transformers.__version__ == pinned


# --------------------------------------------------------------------------------------------------
# output layer: hidden states + weights give the model's logits
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["marian", "t5", "bart"])
def test_hidden_states_and_output_layer_give_the_models_logits(tok, arch):
    model = make(tok, arch).eval()
    if hasattr(model, "final_logits_bias"):
        with torch.no_grad():
            model.final_logits_bias.normal_()  # a nonzero bias must be included
    inputs = forward_inputs(batch_of(tok, model))
    with torch.no_grad():
        expected = model(**inputs).logits
        with hidden_states_only(model) as captured:
            out = model(**inputs)
        weight, bias = output_layer(model)
        assert out.logits.shape == expected.shape[:-1] + (0,)  # no [B, T, V] tensor was computed
        torch.testing.assert_close(F.linear(captured.hidden, weight, bias), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model(**inputs).logits, expected, rtol=0, atol=0)  # the model is restored


def test_t5_hidden_states_are_the_scaled_decoder_output(tok):
    model = make(tok, "t5").eval()
    inputs = forward_inputs(batch_of(tok, model))
    with torch.no_grad():
        decoder_output = model(**inputs, output_hidden_states=True).decoder_hidden_states[-1]
        with hidden_states_only(model) as captured:
            model(**inputs)
    assert model.config.scale_decoder_outputs
    torch.testing.assert_close(captured.hidden, decoder_output * model.config.d_model ** -0.5)


# --------------------------------------------------------------------------------------------------
# the log-scale head
# --------------------------------------------------------------------------------------------------
def test_log_scale_head_reads_the_decoder_output_and_keeps_the_logits(tok):
    base = make(tok).eval()
    inputs = forward_inputs(batch_of(tok, base))
    with torch.no_grad():
        expected = base(**inputs).logits
        decoder_output = base.model(**inputs).last_hidden_state  # what Marian's lm_head reads
    attention = base.config._attn_implementation
    model = LogScaleHeadForSeq2SeqLM.from_model(base).eval()
    assert base.config._attn_implementation == attention  # wrapping leaves the model's configuration alone
    with torch.no_grad():
        out = model(**inputs)
    torch.testing.assert_close(out.logits, expected, rtol=0, atol=0)
    head = model.log_scale_head
    torch.testing.assert_close(out.log_scale, decoder_output @ head.weight.T + head.bias)


@pytest.mark.parametrize("arch", ["marian", "t5"])
def test_log_scale_head_is_saved_and_loaded_with_the_model(tok, arch, tmp_path):
    model = LogScaleHeadForSeq2SeqLM.from_model(make(tok, arch), family="laplace").eval()
    with torch.no_grad():
        model.log_scale_head.bias.normal_()
    inputs = forward_inputs(batch_of(tok, model))
    model.save_pretrained(tmp_path)
    for loader in (LogScaleHeadForSeq2SeqLM, AutoModelForSeq2SeqLM):
        loaded = loader.from_pretrained(tmp_path).eval()
        assert isinstance(loaded, LogScaleHeadForSeq2SeqLM) and loaded.config.family == "laplace"
        assert type(loaded.base) is type(model.base)
        with torch.no_grad():
            a, b = model(**inputs), loaded(**inputs)
        torch.testing.assert_close(b.logits, a.logits, rtol=0, atol=0)
        torch.testing.assert_close(b.log_scale, a.log_scale, rtol=0, atol=0)


def test_log_scale_head_config_rejects_an_unknown_family():
    with pytest.raises(ValueError, match="family: expected one of"):
        LogScaleHeadConfig(text_config={"model_type": "marian"}, family="cauchy")


def test_init_from_teachers_sets_mean_log_probs_and_spread(tok):
    teachers = [make(tok, seed=s).eval() for s in (1, 2, 3)]
    model = LogScaleHeadForSeq2SeqLM.from_model(make(tok))
    batch = batch_of(tok, model, n=6)
    model.init_from_teachers(teachers, **batch)
    mask = batch["labels"].ne(-100)
    with torch.no_grad():  # float64 oracle, member by member
        x = torch.stack([torch.log_softmax(t(**forward_inputs(batch)).logits.double(), -1)[mask] for t in teachers])
    mean = x.mean(0)  # [N, V]
    spread = ((mean - mean.mean(0)).pow(2).mean(0) + (x - mean).pow(2).mean(0).mean(0)).clamp_min(1e-4).sqrt()
    torch.testing.assert_close(model.base.final_logits_bias[0].double(), mean.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.log_scale_head.bias.double(), spread.log(), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# the objective against edd_ext.reference
# --------------------------------------------------------------------------------------------------
OPTIONS = {"ensemble_kl": {}, "dirichlet_nll": {"model_offset": 0.5},
           "proxy_dirichlet_kl": {"direction": "forward", "precision": "epkl"},
           "logit_gaussian_nll": {"min_scale": 0.01}, "logit_laplace_nll": {"teacher_norm": "center"}}


@pytest.mark.parametrize("loss", list(LOSSES))
def test_objective_equals_the_reference_losses(loss):
    g = torch.Generator().manual_seed(0)
    logits, log_scale = torch.randn(2, 5, 13, generator=g, dtype=torch.float64).unbind(0)
    teacher = 3 * torch.randn(5, 3, 13, generator=g, dtype=torch.float64)
    mask = torch.tensor([True, True, False, True, False])
    t, w, a = 2.0, 0.3, 0.7
    objective = DistillationObjective(loss, OPTIONS[loss], loss_weight=w, anchor_weight=a, temperature=t)
    got = objective.from_logits(logits, log_scale, teacher, mask)
    stats = R.ensemble_stats(teacher / t)
    if LOSSES[loss]:
        main = getattr(R, loss)(logits, log_scale, teacher, temperature=t, mask=mask, reduction="sum", **OPTIONS[loss])
    else:
        main = getattr(R, loss)(logits, stats, mask=mask, reduction="sum", **OPTIONS[loss])
    expected = w * main + a * R.ensemble_kl(logits, stats, mask=mask, reduction="sum")
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("kwargs, message", [
    (dict(loss="kl"), "loss: expected one of"),
    (dict(loss="proxy_dirichlet_kl", options={"min_scale": 0.1}), r"loss_options: \['min_scale'\] are not options"),
    (dict(loss="logit_laplace_nll", options={"mask": None}), r"loss_options: \['mask'\] are not options"),
    (dict(anchor_weight=-1.0), "anchor_weight: expected a finite number >= 0"),
    (dict(loss_weight=float("nan")), "loss_weight: expected a finite number >= 0"),
    (dict(temperature=0.0), "temperature: expected a finite number > 0"),
])
def test_objective_rejects_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DistillationObjective(**kwargs)


# --------------------------------------------------------------------------------------------------
# the trainer
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss", ["dirichlet_nll", "logit_laplace_nll"])
def test_trainer_loss_is_the_objective_over_the_step_token_count(tok, tmp_path, loss):
    teachers = [make(tok, seed=s) for s in (1, 2)]
    student = make(tok)
    if LOSSES[loss]:
        student = LogScaleHeadForSeq2SeqLM.from_model(student)
    trainer = trainer_for(tok, student, teachers, tmp_path, loss=loss, temperature=1.5, anchor_weight=0.25,
                          use_linear_losses=False)
    batch = batch_of(tok, student, n=5)
    mask = batch["labels"].ne(-100)
    with torch.no_grad():
        out = student(**forward_inputs(batch))
        member = torch.stack([t(**forward_inputs(batch)).logits for t in teachers], dim=-2)
        total = DistillationObjective(loss, anchor_weight=0.25, temperature=1.5).from_logits(
            out.logits, getattr(out, "log_scale", None), member, mask)
        torch.testing.assert_close(trainer.compute_loss(student, dict(batch)), total / mask.sum())
        torch.testing.assert_close(trainer.compute_loss(student, dict(batch), num_items_in_batch=torch.tensor(40)),
                                   total / 40)


def test_trainer_gradient_accumulation_equals_one_batch(tok, tmp_path):
    """Micro-batches of 2 with 2 accumulation steps give the parameters of batches of 4 (the micro-batches hold
    different numbers of target tokens, so a per-micro-batch mean would not)."""
    teachers = [make(tok, seed=s) for s in (1, 2)]
    init = make(tok)
    data = encode_pairs(tok, SOURCES[:8], TARGETS[:8])
    counts = [sum(y != -100 for y in d["labels"]) for d in data]
    assert counts[0] + counts[1] != counts[2] + counts[3]
    params = []
    for per_device, accumulation in ((4, 1), (2, 2)):
        student = copy.deepcopy(init)
        args = training_args(tmp_path, per_device_train_batch_size=per_device,
                             gradient_accumulation_steps=accumulation)
        trainer = trainer_for(tok, student, teachers, tmp_path, args=args, loss="proxy_dirichlet_kl")
        trainer.train()
        params.append(dict(student.named_parameters()))
    for name, value in params[0].items():
        torch.testing.assert_close(params[1][name], value, rtol=1e-5, atol=1e-6,
                                   msg=lambda m, name=name: f"{name}: {m}")
    assert any(not torch.equal(v, dict(init.named_parameters())[k]) for k, v in params[0].items())


def test_trainer_keeps_teachers_frozen_outside_the_wrapper_in_half_precision(tok, tmp_path):
    teachers = [make(tok, seed=s).train() for s in (1, 2)]
    before = [copy.deepcopy(t.state_dict()) for t in teachers]
    student = make(tok, "t5")
    teachers_t5 = [make(tok, "t5", seed=s) for s in (1, 2)]
    trainer = trainer_for(tok, student, teachers_t5, tmp_path, loss="ensemble_kl", teacher_dtype=torch.bfloat16)
    trainer.train()
    for teacher in trainer.teachers:
        assert not teacher.training and teacher.dtype == torch.bfloat16
        assert not any(p.requires_grad for p in teacher.parameters())
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    trainer = trainer_for(tok, make(tok), teachers, tmp_path, loss="dirichlet_nll")
    trainer.train()
    for teacher, state in zip(teachers, before):
        for k, v in teacher.state_dict().items():
            assert torch.equal(v, state[k])  # never updated


@pytest.mark.skipif(not linear_losses_available(), reason="this edd_ext has no fused linear losses (edd_ext.linear_*)")
@pytest.mark.parametrize("arch", ["marian", "t5"])
@pytest.mark.parametrize("loss", ["proxy_dirichlet_kl", "logit_laplace_nll"])
def test_linear_path_equals_the_logits_path(tok, tmp_path, arch, loss):
    teachers = [make(tok, arch, seed=s) for s in (1, 2)]
    init = make(tok, arch)
    if LOSSES[loss]:
        init = LogScaleHeadForSeq2SeqLM.from_model(init)
    batch = batch_of(tok, init, n=5)
    grads = []
    for linear in (False, True):
        student = copy.deepcopy(init)
        trainer = trainer_for(tok, student, teachers, tmp_path, loss=loss, temperature=1.5, anchor_weight=0.5,
                              use_linear_losses=linear)
        assert trainer.use_linear_losses is linear
        loss_value = trainer.compute_loss(student, dict(batch))
        loss_value.backward()
        grads.append((loss_value.detach(), {k: p.grad for k, p in student.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-6)
    assert grads[0][1].keys() == grads[1][1].keys()
    for name, g in grads[0][1].items():
        torch.testing.assert_close(grads[1][1][name], g, rtol=1e-4, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


def test_linear_losses_are_the_default_when_available(tok, tmp_path):
    trainer = trainer_for(tok, make(tok), [make(tok, seed=1)], tmp_path, loss="ensemble_kl")
    assert trainer.use_linear_losses is linear_losses_available()


def test_linear_losses_requested_but_missing(tok, tmp_path):
    if linear_losses_available():
        pytest.skip("this edd_ext has the fused linear losses")
    with pytest.raises(ValueError, match="use_linear_losses: True needs the fused linear losses"):
        trainer_for(tok, make(tok), [make(tok, seed=1)], tmp_path, loss="ensemble_kl", use_linear_losses=True)


def _other_tokenizer(tok):
    return word_tokenizer(SOURCES + TARGETS + ["extra words here"])


@pytest.mark.parametrize("case, message", [
    ("vocabulary", r"teachers\[1\]: expected the vocabulary of the student \(\d+ output classes\), got \d+"),
    ("special", r"teachers\[0\]: expected config.eos_token_id = \d+ \(that of the student\), got 0"),
    ("student", r"teachers\[0\]: is the student model itself"),
    ("shared", r"teachers\[0\]: shares parameters with the student"),
    ("empty", "teachers: expected at least one teacher model"),
    ("no_head", r"model: loss='logit_gaussian_nll' trains a location and a log-scale.*got a MarianMTModel"),
    ("head", r"model: a LogScaleHeadForSeq2SeqLM student is for the logit-space losses"),
    ("tokenizer", r"teacher_tokenizers\[0\]: expected the student's vocabulary"),
])
def test_trainer_errors(tok, tmp_path, case, message):
    student, teachers, kw = make(tok), [make(tok, seed=1), make(tok, seed=2)], dict(loss="proxy_dirichlet_kl")
    if case == "vocabulary":
        teachers[1] = make(_other_tokenizer(tok))
    elif case == "special":
        teachers[0].config.eos_token_id = 0
    elif case == "student":
        teachers = [student]
    elif case == "shared":
        teachers[0].model.shared = student.model.shared
    elif case == "empty":
        teachers = []
    elif case == "no_head":
        kw["loss"] = "logit_gaussian_nll"
    elif case == "head":
        student = LogScaleHeadForSeq2SeqLM.from_model(student)
    elif case == "tokenizer":
        kw["teacher_tokenizers"] = [_other_tokenizer(tok)]
    with pytest.raises(ValueError, match=message):
        trainer_for(tok, student, teachers, tmp_path, **kw)


def test_trainer_needs_labels(tok, tmp_path):
    student = make(tok)
    trainer = trainer_for(tok, student, [make(tok, seed=1)], tmp_path)
    batch = dict(batch_of(tok, student))
    batch.pop("labels")
    with pytest.raises(ValueError, match=r"inputs: expected 'labels' \[B, T\] with -100 at padding"):
        trainer.compute_loss(student, batch)


# --------------------------------------------------------------------------------------------------
# generate_with_uncertainty
# --------------------------------------------------------------------------------------------------
def test_scored_mask_ends_at_the_first_eos():
    tokens = torch.tensor([[5, 2, 0, 0], [5, 6, 7, 8], [2, 2, 0, 0]])
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(_scored_mask(tokens, 2), expected)
    assert torch.equal(_scored_mask(tokens, [9, 2]), expected)


def _source(tok, n=3):
    enc = tok(SOURCES[:n], return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def _forced(model, ids, mask, sequences):
    return model(input_ids=ids, attention_mask=mask, decoder_input_ids=sequences[:, :-1]).logits


def test_ensemble_greedy_decodes_with_the_mean_probability(tok):
    members = [make(tok, seed=s).eval() for s in (1, 2, 3)]
    ids, mask = _source(tok)
    out = generate_with_uncertainty(members, input_ids=ids, attention_mask=mask, max_new_tokens=5)
    # decoding loop written out: every step recomputes each member on the prefix
    prefix = torch.full((ids.shape[0], 1), tok.pad_token_id)
    with torch.no_grad():
        for _ in range(5):
            step = torch.stack([torch.log_softmax(m(input_ids=ids, attention_mask=mask, decoder_input_ids=prefix)
                                                  .logits[:, -1].double(), -1) for m in members])
            prefix = torch.cat([prefix, torch.logsumexp(step, 0).argmax(-1, keepdim=True)], 1)
    finished = _scored_mask(prefix[:, 1:], tok.eos_token_id)
    expected = torch.where(torch.cat([torch.ones_like(finished[:, :1]), finished], 1), prefix, tok.pad_token_id)
    assert torch.equal(out.sequences, expected)


@pytest.mark.parametrize("num_beams", [1, 2])
def test_one_member_ensemble_decodes_like_the_model(tok, num_beams):
    model = make(tok, seed=4).eval()
    ids, mask = _source(tok)
    kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=6, num_beams=num_beams)
    with torch.no_grad():
        expected = model.generate(**kw)
    assert torch.equal(generate_with_uncertainty([model], **kw).sequences, expected)


def test_ensemble_measures_equal_the_reference(tok):
    members = [make(tok, seed=s).eval() for s in (1, 2, 3)]
    ids, mask = _source(tok)
    out = generate_with_uncertainty(members, input_ids=ids, attention_mask=mask, max_new_tokens=5)
    seq = out.sequences
    with torch.no_grad():
        logits = torch.stack([_forced(m, ids, mask, seq).double() for m in members], dim=-2)  # [N, L, M, V]
    stats = R.ensemble_stats(logits)
    scored = out.mask
    member_lp = torch.log_softmax(logits, -1).gather(-1, seq[:, 1:, None, None].expand(-1, -1, 3, 1))[..., 0]
    lengths = scored.sum(-1)
    for name in ("total", "data", "mutual_information", "epkl", "rmi"):
        expected = (getattr(stats, name) * scored).sum(-1) / lengths
        torch.testing.assert_close(out.sequence_uncertainty[name].double(), expected, rtol=1e-4, atol=1e-5)
    mean_lp = torch.logsumexp(member_lp, -1) - math.log(3)  # [N, L]
    torch.testing.assert_close(out.sequence_uncertainty["pe"].double(), -(mean_lp * scored).sum(-1) / lengths,
                               rtol=1e-5, atol=1e-5)
    ep = -(torch.logsumexp((member_lp * scored[..., None]).sum(1), -1) - math.log(3)) / lengths
    torch.testing.assert_close(out.sequence_uncertainty["ep"].double(), ep, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.sequence_log_probs.double(), (mean_lp * scored).sum(-1), rtol=1e-5, atol=1e-5)


def test_dirichlet_and_categorical_measures_equal_the_reference(tok):
    model = make(tok, seed=5).eval()
    ids, mask = _source(tok)
    out = generate_with_uncertainty(model, input_ids=ids, attention_mask=mask, max_new_tokens=5, model_offset=0.5)
    seq, scored = out.sequences, out.mask
    with torch.no_grad():
        z = _forced(model, ids, mask, seq).double()
    u = R.dirichlet_uncertainty(z, model_offset=0.5)
    for name in u._fields:
        expected = (getattr(u, name) * scored).sum(-1) / scored.sum(-1)
        torch.testing.assert_close(out.sequence_uncertainty[name].double(), expected, rtol=1e-4, atol=1e-5)
    alpha = z.exp() + 0.5
    p_y = (alpha / alpha.sum(-1, keepdim=True)).gather(-1, seq[:, 1:, None])[..., 0]
    torch.testing.assert_close(out.sequence_uncertainty["pe"].double(),
                               -(p_y.log() * scored).sum(-1) / scored.sum(-1), rtol=1e-5, atol=1e-5)

    categorical = generate_with_uncertainty(model, distribution="categorical", input_ids=ids, attention_mask=mask,
                                            max_new_tokens=5)
    assert set(categorical.sequence_uncertainty) == {"total", "pe"}
    log_p = torch.log_softmax(z, -1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    torch.testing.assert_close(categorical.sequence_uncertainty["total"].double(),
                               (entropy * scored).sum(-1) / scored.sum(-1), rtol=1e-5, atol=1e-5)
    assert torch.equal(categorical.token_uncertainty.mutual_information, torch.zeros_like(entropy).float())


def test_logit_student_samples_the_family_it_was_trained_as(tok):
    model = LogScaleHeadForSeq2SeqLM.from_model(make(tok, seed=6), family="laplace").eval()
    ids, mask = _source(tok)
    out = generate_with_uncertainty(model, input_ids=ids, attention_mask=mask, max_new_tokens=4, num_samples=7, seed=3)
    with torch.no_grad():
        forced = model(input_ids=ids, attention_mask=mask, decoder_input_ids=out.sequences[:, :-1])
    for family, differs in (("laplace", False), ("gaussian", True)):
        u = E.uncertainty.logit_distribution(forced.logits, forced.log_scale, family=family, num_samples=7, seed=3)
        same = torch.allclose(torch.where(out.mask, u.mutual_information, 0), out.token_uncertainty.mutual_information)
        assert same is not differs


def test_nbest_aggregation_over_returned_hypotheses(tok):
    model = make(tok, seed=7).eval()
    ids, mask = _source(tok)
    out = generate_with_uncertainty(model, input_ids=ids, attention_mask=mask, max_new_tokens=4, num_beams=3,
                                    num_return_sequences=2, nbest_temperature=2.0)
    assert out.sequences.shape[0] == 6
    weights = torch.softmax(out.sequence_log_probs.view(3, 2) / 2.0, -1)
    for name, score in out.sequence_uncertainty.items():
        torch.testing.assert_close(out.nbest_uncertainty[name], (weights * score.view(3, 2)).sum(-1))


def test_generate_with_uncertainty_errors(tok):
    ids, mask = _source(tok)
    with pytest.raises(ValueError, match=r"distribution: expected one of \('dirichlet', 'categorical'\)"):
        generate_with_uncertainty(make(tok), distribution="laplace", input_ids=ids)
    with pytest.raises(ValueError, match=r"distribution: expected one of \('ensemble',\)"):
        generate_with_uncertainty([make(tok)], distribution="dirichlet", input_ids=ids)
    with pytest.raises(ValueError, match="generate_kwargs: expected input_ids"):
        generate_with_uncertainty(make(tok), inputs=ids)
    with pytest.raises(ValueError, match=r"members\[1\]: expected the vocabulary of members\[0\]"):
        EnsembleForGeneration([make(tok), make(_other_tokenizer(tok))])
