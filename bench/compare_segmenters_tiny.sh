#!/bin/bash
# Usage: python -m bench.tiny_gt_masks runs/tinygt runs/tinycache && bash bench/compare_segmenters_tiny.sh
# (then read runs/cmp/<segmenter>_s<seed>/segmenter/manifest.json: eval.eval.miou, eval.eval_crf.miou)
# DeepLabV2 vs EMANet on identical masks (tiny embedded benchmark, ground-truth-derived masks), 3 seeds
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/cmp}; MASKS=${MASKS:-$PWD/runs/tinygt}; CACHE=${CACHE:-$PWD/runs/tinycache}
# the tiny data of debug=tiny, with the embedded benchmark's classifier width (as measured for BENCHMARKS.md)
TINY="debug=tiny model.backbone.model_kwargs.channels=[32,64,128,256]"
mkdir -p $OUT
for seed in 1 2 3; do
  for group in synthetic emanet_synthetic; do
    OMP_NUM_THREADS=1 PYTHONPATH=$PWD/src nice -n 10 ${PYTHON:-python} -m vwl_lightning stage=segmenter \
      segmenter=$group segmenter.pseudo_dir=$MASKS segmenter.backbone_init=null seed=$seed \
      run_dir=$PWD/$OUT/${group}_s$seed logger=csv paths.cache_dir=$CACHE $TINY \
      segmenter.max_epochs=4 trainer.enable_progress_bar=false > $OUT/${group}_s$seed.log 2>&1 &
  done
done
wait
