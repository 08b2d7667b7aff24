#!/usr/bin/env bash
# End-to-end ensemble distribution distillation on fairseq, on CPU in a few minutes:
#   1. a small deterministic parallel corpus (make_corpus.py) with two out-of-domain source sets,
#   2. fairseq-preprocess,
#   3. three tiny transformer teachers (different seeds),
#   4. two students distilled from them through the edd_fairseq plugin (--user-dir), each starting from
#      teacher 1's weights (--finetune-from-model; from scratch the Laplace student's location gradient,
#      sign(x - mu) / s, trains a model this small slowly):
#        proxy    edd_proxy_dirichlet_kl, teacher statistics cached in a first pass
#        laplace  edd_logit_laplace (--teacher-norm center) on edd_transformer_logit, member logits cached
#   5. generation with token- and sequence-level uncertainties for the ensemble and both students,
#   6. BLEU, PRR and OOD AUROC of every measure.
#
# Usage: bash python_examples/fairseq/run_example.sh [WORKDIR]
#   WORKDIR   where data, checkpoints, logs and outputs go (default: $TMPDIR/edd_fairseq_example)
# Environment: PYTHON (default: python) must have edd_ext and fairseq installed (pip install .[fairseq], or
#   .ci/install_fairseq.sh); TEACHER_EPOCHS (default 30), STUDENT_EPOCHS (default 12).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=${PYTHON:-python}
WORK=${1:-${TMPDIR:-/tmp}/edd_fairseq_example}
TEACHER_EPOCHS=${TEACHER_EPOCHS:-30}
STUDENT_EPOCHS=${STUDENT_EPOCHS:-12}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
USER_DIR=$HERE/edd_fairseq
LOGS=$WORK/logs
mkdir -p "$WORK" "$LOGS"
start=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - start ))s] $*"; }
last_valid() { grep -E "\| valid on" "$1" | tail -1 | sed -E 's/.*\| valid on .valid. subset \| //; s/ \| wps.*//'; }

stamp "corpus -> $WORK/raw"
"$PY" "$HERE/make_corpus.py" "$WORK/raw" --ood permuted,foreign

stamp "fairseq-preprocess -> $WORK/bin (test1 = OOD permuted, test2 = OOD foreign)"
rm -rf "$WORK/bin"
"$PY" -m fairseq_cli.preprocess --source-lang src --target-lang tgt \
  --trainpref "$WORK/raw/train" --validpref "$WORK/raw/valid" \
  --testpref "$WORK/raw/test,$WORK/raw/ood_permuted,$WORK/raw/ood_foreign" \
  --srcdict "$WORK/raw/dict.txt" --joined-dictionary --destdir "$WORK/bin" --workers 1 > "$LOGS/preprocess.log" 2>&1

# Shared training options: a 1+1-layer, 64-dimensional transformer, Adam, validation at the end.
TRAIN=("$WORK/bin" --user-dir "$USER_DIR" --share-all-embeddings --dropout 0.1
  --optimizer adam --adam-betas "(0.9,0.98)" --lr 3e-3 --lr-scheduler inverse_sqrt --warmup-updates 100
  --max-tokens 2048 --cpu --no-progress-bar --log-interval 100 --num-workers 0
  --no-epoch-checkpoints --no-save-optimizer-state)

TEACHERS=""
for seed in 1 2 3; do
  stamp "teacher $seed: cross-entropy, $TEACHER_EPOCHS epochs"
  "$PY" -m fairseq_cli.train "${TRAIN[@]}" --arch edd_transformer_tiny --criterion label_smoothed_cross_entropy \
    --seed "$seed" --max-epoch "$TEACHER_EPOCHS" --validate-interval "$TEACHER_EPOCHS" \
    --save-interval "$TEACHER_EPOCHS" --save-dir "$WORK/teacher$seed" > "$LOGS/teacher$seed.log" 2>&1
  echo "   valid: $(last_valid "$LOGS/teacher$seed.log")"
  TEACHERS="${TEACHERS:+$TEACHERS:}$WORK/teacher$seed/checkpoint_last.pt"
done

DISTIL=(--task edd_distillation --teacher-paths "$TEACHERS" --teacher-cache-dir "$WORK/teacher_cache"
  --finetune-from-model "$WORK/teacher1/checkpoint_last.pt"
  --max-epoch "$STUDENT_EPOCHS" --validate-interval "$STUDENT_EPOCHS" --save-interval "$STUDENT_EPOCHS" --seed 7)

stamp "student proxy: edd_proxy_dirichlet_kl, $STUDENT_EPOCHS epochs (teacher statistics cached on disk)"
"$PY" -m fairseq_cli.train "${TRAIN[@]}" "${DISTIL[@]}" --arch edd_transformer_tiny \
  --criterion edd_proxy_dirichlet_kl --save-dir "$WORK/proxy" > "$LOGS/proxy.log" 2>&1
echo "   valid: $(last_valid "$LOGS/proxy.log")"

stamp "student laplace: edd_logit_laplace on edd_transformer_logit_tiny, $STUDENT_EPOCHS epochs (member logits cached)"
"$PY" -m fairseq_cli.train "${TRAIN[@]}" "${DISTIL[@]}" --arch edd_transformer_logit_tiny \
  --criterion edd_logit_laplace --teacher-norm center --save-dir "$WORK/laplace" > "$LOGS/laplace.log" 2>&1
echo "   valid: $(last_valid "$LOGS/laplace.log")"

GEN=("$WORK/bin" --gen-subset test,test1,test2 --beam 4 --nbest 4 --max-len-a 2 --max-len-b 5 --batch-size 128
  --cpu --num-workers 0)
for system in ensemble proxy laplace; do
  case $system in
    ensemble) path=$TEACHERS ;;
    *) path=$WORK/$system/checkpoint_last.pt ;;
  esac
  stamp "generate with uncertainties: $system -> $WORK/out/$system"
  "$PY" "$HERE/generate.py" "${GEN[@]}" --path "$path" --results-path "$WORK/out/$system" \
    > "$LOGS/generate_$system.log" 2>&1
done

stamp "score: BLEU on test; PRR on test (error = 100 - sentence BLEU); AUROC test vs OOD (percent)"
"$PY" "$HERE/score.py" --system ensemble="$WORK/out/ensemble" --system proxy="$WORK/out/proxy" \
  --system laplace="$WORK/out/laplace" --id test --ood permuted=test1 --ood foreign=test2 \
  --json "$WORK/out/scores.json" 2> "$LOGS/score.log"
stamp "done: hypotheses with uncertainties in $WORK/out/*/generate-*.txt and uncertainty-*.jsonl"
