#!/bin/bash
# Usage: python bench/tiny_gt_masks.py runs/tinygt runs/tinycache && bash bench/compare_segmenters_tiny.sh
# (then read runs/cmp/<segmenter>_s<seed>/segmenter/manifest.json: eval.eval.miou, eval.eval_crf.miou)
# DeepLabV2 vs EMANet on identical masks (tiny embedded benchmark, ground-truth-derived masks), 3 seeds
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/cmp}; MASKS=${MASKS:-$PWD/runs/tinygt}; CACHE=${CACHE:-$PWD/runs/tinycache}
TINY="data.source.generator.num_train=48 data.source.generator.num_val=16 data.source.generator.image_size=64 data.train_transform.resize_long=[56,72] data.train_transform.crop_size=64 data.eval_size=64 data.batch_size=8 data.eval_batch_size=8 data.num_workers=0"
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
