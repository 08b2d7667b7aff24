"""Uncertainty-aware generation: ``fairseq-generate`` plus token- and sequence-level uncertainties.

Accepts every ``fairseq-generate`` option (``--path``, ``--gen-subset``, ``--beam``, ``--nbest``,
``--batch-size``, ``--results-path``, ...; ``--gen-subset`` may list several subsets, comma-separated)
and these:

  --edd-kind {auto,ensemble,categorical,dirichlet,logit-gaussian,logit-laplace}
        what the models are (default auto: several --path checkpoints form an ensemble; a single checkpoint's
        kind is read from the criterion it was trained with)
  --edd-samples S        Monte-Carlo samples for logit-distribution students (default 25)
  --edd-seed SEED        their seed (default 0)
  --edd-nbest-temperature T   temperature of the n-best weights softmax(ln P(y_b) / T) (default 1)

Writes into --results-path (required):

  generate-{subset}.txt     fairseq's S-/T-/H-/P- lines, and after each hypothesis
                            U-{id}  its sequence-level measures and  N-{id}  (after the last hypothesis) the
                            n-best aggregates; token-level measures as  TU-{id}, MI-{id}, ... lines
  uncertainty-{subset}.jsonl  one JSON object per sentence: id, src, ref, hyp, score, kind, "sequence"
                            (measures of the best hypothesis), "nbest" (aggregates) and "token" (per-token
                            measures of the best hypothesis)

Run it as ``python -m edd_fairseq.generate DATA --path ...`` with ``python_examples/fairseq`` on PYTHONPATH,
or as ``python python_examples/fairseq/generate.py DATA --path ...``; ``--user-dir`` is added for you.
"""
import ast
import json
import logging
import math
import os
import sys
import time

import torch

# Set before fairseq loads any checkpoint (see edd_fairseq/__init__.py).
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

from fairseq import checkpoint_utils, options, tasks, utils  # noqa: E402
from fairseq.dataclass.utils import convert_namespace_to_omegaconf  # noqa: E402

import edd_ext  # noqa: E402

from .sequence_uncertainty import KINDS, HypothesisScorer, kind_of_checkpoint  # noqa: E402

logger = logging.getLogger("edd_fairseq.generate")


def get_parser():
    parser = options.get_generation_parser()
    group = parser.add_argument_group("uncertainty (edd_fairseq)")
    group.add_argument("--edd-kind", default="auto", choices=("auto",) + KINDS)
    group.add_argument("--edd-samples", type=int, default=25)
    group.add_argument("--edd-seed", type=int, default=0)
    group.add_argument("--edd-nbest-temperature", type=float, default=1.0)
    return parser


def _with_user_dir(argv):
    if any(a == "--user-dir" or a.startswith("--user-dir=") for a in argv):
        return argv
    return list(argv) + ["--user-dir", os.path.dirname(os.path.abspath(__file__))]


def main(argv=None):
    argv = _with_user_dir(sys.argv[1:] if argv is None else argv)
    parser = get_parser()
    args = options.parse_args_and_arch(parser, input_args=argv)
    cfg = convert_namespace_to_omegaconf(args)
    if not cfg.common_eval.results_path:
        parser.error("--results-path is required (the hypotheses and their uncertainties are written there)")
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        level=os.environ.get("LOGLEVEL", "INFO").upper(), stream=sys.stderr)
    utils.import_user_module(cfg.common)
    if cfg.dataset.max_tokens is None and cfg.dataset.batch_size is None:
        cfg.dataset.max_tokens = 12000
    if cfg.common.seed is not None:
        utils.set_torch_seed(cfg.common.seed)
    use_cuda = torch.cuda.is_available() and not cfg.common.cpu

    task = tasks.setup_task(cfg.task)
    tgt_dict = task.target_dictionary
    overrides = ast.literal_eval(cfg.common_eval.model_overrides)
    paths = utils.split_paths(cfg.common_eval.path)
    models, kinds = [], []
    for path in paths:
        loaded, saved_cfg = checkpoint_utils.load_model_ensemble([path], arg_overrides=overrides, task=task)
        models += loaded
        kinds.append(kind_of_checkpoint(saved_cfg))
    for model in models:
        if cfg.common.fp16:
            model.half()
        if use_cuda:
            model.cuda()
        model.prepare_for_inference_(cfg)

    kind = args.edd_kind
    if kind == "auto":
        kind = "ensemble" if len(models) > 1 else kinds[0]["kind"]
    options_ = kinds[0] if len(models) == 1 else {}
    scorer = HypothesisScorer(
        models, kind, tgt_dict.pad(), tgt_dict.eos(), model_offset=float(options_.get("model_offset", 1.0)),
        min_scale=float(options_.get("min_scale", 0.0)), num_samples=args.edd_samples, seed=args.edd_seed,
        nbest_temperature=args.edd_nbest_temperature)
    logger.info("scoring %d model(s) from %s as %r; edd_ext compiled ops: %s (CUDA: %s)", len(models),
                cfg.common_eval.path, kind, edd_ext.has_extension(), edd_ext.cuda_built())

    generator = task.build_generator(models, cfg.generation)
    for subset in [x for x in cfg.dataset.gen_subset.split(",") if x]:
        task.load_dataset(subset, task_cfg=saved_cfg.task)
        began = time.time()
        records = generate_subset(cfg, task, models, generator, scorer, subset, use_cuda)
        _write(cfg.common_eval.results_path, subset, kind, records)
        logger.info("%s: %d sentences in %.1fs -> %s", subset, len(records), time.time() - began,
                    cfg.common_eval.results_path)


def generate_subset(cfg, task, models, generator, scorer, subset, use_cuda):
    """Decode ``subset`` and score every hypothesis; one record per sentence, sorted by id."""
    src_dict, tgt_dict = task.source_dictionary, task.target_dictionary
    itr = task.get_batch_iterator(
        dataset=task.dataset(subset),
        max_tokens=cfg.dataset.max_tokens,
        max_sentences=cfg.dataset.batch_size,
        max_positions=utils.resolve_max_positions(task.max_positions(), *[m.max_positions() for m in models]),
        ignore_invalid_inputs=cfg.dataset.skip_invalid_size_inputs_valid_test,
        required_batch_size_multiple=cfg.dataset.required_batch_size_multiple,
        seed=cfg.common.seed,
        num_workers=cfg.dataset.num_workers,
    ).next_epoch_itr(shuffle=False)
    nbest = cfg.generation.nbest
    records = []
    for sample in itr:
        sample = utils.move_to_cuda(sample) if use_cuda else sample
        if "net_input" not in sample:
            continue
        hypos = task.inference_step(generator, models, sample)
        hypos = [beam[:nbest] for beam in hypos]
        scored = scorer.score(sample, hypos)
        for i, sample_id in enumerate(sample["id"].tolist()):
            src = src_dict.string(utils.strip_pad(sample["net_input"]["src_tokens"][i], tgt_dict.pad()))
            ref = ""
            if sample.get("target") is not None:
                ref = tgt_dict.string(utils.strip_pad(sample["target"][i], tgt_dict.pad()), escape_unk=True)
            hyps = []
            for hypo, measures in zip(hypos[i], scored[i]):
                hyps.append({
                    "hyp": tgt_dict.string(hypo["tokens"].int().cpu()),
                    "score": float(hypo["score"]),
                    "positional_scores": [round(float(x), 6) for x in hypo["positional_scores"].tolist()],
                    **measures,
                })
            records.append({"id": sample_id, "src": src, "ref": ref, "hyps": hyps,
                            "nbest": scorer.nbest(scored[i])})
    records.sort(key=lambda r: r["id"])
    return records


def _fmt(measures):
    return " ".join(f"{k}={v:.6g}" for k, v in measures.items())


def _write(results_path, subset, kind, records):
    os.makedirs(results_path, exist_ok=True)
    with open(os.path.join(results_path, f"generate-{subset}.txt"), "w", encoding="utf-8") as text, \
            open(os.path.join(results_path, f"uncertainty-{subset}.jsonl"), "w", encoding="utf-8") as js:
        for r in records:
            i = r["id"]
            print(f"S-{i}\t{r['src']}", file=text)
            print(f"T-{i}\t{r['ref']}", file=text)
            for h in r["hyps"]:
                print(f"H-{i}\t{h['score'] / math.log(2)}\t{h['hyp']}", file=text)
                print(f"P-{i}\t" + " ".join(f"{x / math.log(2):.4f}" for x in h["positional_scores"]), file=text)
                print(f"U-{i}\t{_fmt(h['sequence'])}", file=text)
                for name, values in h["token"].items():
                    print(f"{name.upper()}-{i}\t" + " ".join(f"{x:.4f}" for x in values), file=text)
            print(f"N-{i}\t{_fmt(r['nbest'])}", file=text)
            best = r["hyps"][0]
            json.dump({"id": i, "src": r["src"], "ref": r["ref"], "hyp": best["hyp"], "score": best["score"],
                       "kind": kind, "sequence": best["sequence"], "nbest": r["nbest"], "token": best["token"]},
                      js)
            js.write("\n")


def cli_main():
    main()


if __name__ == "__main__":
    cli_main()
