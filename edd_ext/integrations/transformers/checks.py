"""Checks of the models and tokenizers handed to the trainer and to ``generate_with_uncertainty``; each
mistake a user can make raises a ``ValueError`` that names the argument, the expectation and what was seen."""
from __future__ import annotations

from typing import Optional, Sequence

from torch import nn

__all__ = ["check_same_vocabulary", "check_teachers", "check_tokenizers", "unwrap"]

_SPECIAL_IDS = ("pad_token_id", "eos_token_id", "decoder_start_token_id")


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside ``DistributedDataParallel`` / ``DataParallel`` / ``torch.compile`` wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _num_classes(model: nn.Module) -> int:
    layer = model.get_output_embeddings()
    return layer.out_features if hasattr(layer, "out_features") else layer.weight.shape[0]


def check_same_vocabulary(reference: nn.Module, others: Sequence[nn.Module], *, reference_name: str,
                          others_name: str) -> None:
    """Every model in ``others`` predicts the same classes as ``reference``: the same output size and the same
    special token ids (a model trained with another tokenizer shows in one or the other)."""
    v = _num_classes(reference)
    for i, other in enumerate(others):
        name = f"{others_name}[{i}]"
        if _num_classes(other) != v:
            raise ValueError(
                f"{name}: expected the vocabulary of {reference_name} ({v} output classes), got "
                f"{_num_classes(other)} output classes; teachers and student must share one tokenizer"
            )
        for key in _SPECIAL_IDS:
            mine, theirs = getattr(reference.config, key, None), getattr(other.config, key, None)
            if mine != theirs:
                raise ValueError(
                    f"{name}: expected config.{key} = {mine!r} (that of {reference_name}), got {theirs!r}; "
                    "teachers and student must share one tokenizer"
                )


def check_teachers(student: nn.Module, teachers: Sequence[nn.Module]) -> None:
    """``teachers`` is a non-empty sequence of seq2seq models, none of them the student (or sharing its
    parameters), with the student's vocabulary."""
    if isinstance(teachers, nn.Module) or not isinstance(teachers, (list, tuple, nn.ModuleList)):
        raise ValueError(f"teachers: expected a list of seq2seq models, got {type(teachers).__name__}")
    if len(teachers) == 0:
        raise ValueError("teachers: expected at least one teacher model, got an empty list")
    student = unwrap(student)
    student_params = {id(p) for p in student.parameters()}
    for i, teacher in enumerate(teachers):
        if not isinstance(teacher, nn.Module) or not hasattr(teacher, "get_output_embeddings"):
            raise ValueError(f"teachers[{i}]: expected a transformers seq2seq model, got {type(teacher).__name__}")
        if unwrap(teacher) is student or unwrap(teacher) is getattr(student, "base", None):
            raise ValueError(
                f"teachers[{i}]: is the student model itself; pass a separate copy (e.g. a model loaded from the "
                "teacher's checkpoint) as the teacher"
            )
        if any(id(p) in student_params for p in teacher.parameters()):
            raise ValueError(
                f"teachers[{i}]: shares parameters with the student; the teachers must be separate models "
                "(copy.deepcopy the teacher if the student starts from it)"
            )
    base = getattr(student, "base", student)
    check_same_vocabulary(base, teachers, reference_name="the student", others_name="teachers")


def check_tokenizers(tokenizer, teacher_tokenizers: Optional[Sequence]) -> None:
    """Each teacher tokenizer maps every token to the same id as the student's ``tokenizer``."""
    if not teacher_tokenizers:
        return
    if tokenizer is None:
        raise ValueError("teacher_tokenizers: to compare them, pass the student's tokenizer as processing_class")
    vocab = tokenizer.get_vocab()
    for i, other in enumerate(teacher_tokenizers):
        theirs = other.get_vocab()
        if theirs == vocab:
            continue
        differ = sorted(set(vocab.items()) ^ set(theirs.items()), key=str)[:3]
        raise ValueError(
            f"teacher_tokenizers[{i}]: expected the student's vocabulary ({len(vocab)} tokens), got {len(theirs)} "
            f"tokens differing in e.g. {differ}; teachers and student must share one tokenizer"
        )
