"""Build a student model that shares its teacher's tokenizer.

Three ways, chosen in config (`models.student.method`):
  - `layers: [0, 6, 12, ...]`: a slice of the teacher: same embeddings, final norm, LM head and
    attention heads, keeping only the listed decoder layers (DistilBERT/"layer dropping" init);
  - `sizes: {hidden_size, num_hidden_layers, num_attention_heads, ...}`: a model of the teacher's
    architecture with those sizes and the teacher's vocabulary, randomly initialised (seeded);
  - `source: ...`: an existing model (any model source) checked to share the teacher's tokenizer.

    python -m distill.models.student --teacher results/models/teacher \
        --spec '{"layers": [0, 6, 12, 18, 24, 29]}' --seed 0 --out results/models/student_init
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch

from distill.io import InputError, main_guard, setup_logging
from distill.models.resolve import load_source, save_model


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the vocabulary (token -> id) and the special tokens: equal iff interchangeable."""
    vocab = sorted(tokenizer.get_vocab().items())
    special = sorted((str(k), str(v)) for k, v in tokenizer.special_tokens_map.items())
    blob = json.dumps({"vocab": vocab, "special": special}, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def check_same_tokenizer(teacher_tok, student_tok, teacher_name: str, student_name: str) -> None:
    """Refuse a teacher/student pair whose tokenizers differ (distillation compares token ids)."""
    a, b = tokenizer_fingerprint(teacher_tok), tokenizer_fingerprint(student_tok)
    if a != b:
        raise InputError(
            f"teacher `{teacher_name}` (tokenizer {a[:12]}, {len(teacher_tok)} tokens) and student "
            f"`{student_name}` (tokenizer {b[:12]}, {len(student_tok)} tokens) have different "
            "tokenizers; token-level distillation needs the same one. Fix: pick a student from "
            "the teacher's family, or build one from the teacher (models.student.layers/sizes)."
        )


def slice_teacher(teacher, layers: list[int]):
    """A copy of `teacher` that keeps only the decoder layers `layers` (in that order)."""
    n_layers = teacher.config.num_hidden_layers
    bad = [i for i in layers if not 0 <= i < n_layers]
    if bad or not layers or len(set(layers)) != len(layers):
        raise InputError(
            f"models.student.layers = {layers}: need distinct layer indices in [0, {n_layers - 1}] "
            f"(the teacher has {n_layers} layers)."
        )
    config = teacher.config.__class__.from_dict(teacher.config.to_dict())
    config.num_hidden_layers = len(layers)
    if getattr(config, "layer_types", None):
        config.layer_types = [teacher.config.layer_types[i] for i in layers]
    student = type(teacher)(config)
    state = {}
    for name, tensor in teacher.state_dict().items():
        parts = name.split(".")
        if "layers" in parts:
            pos = parts.index("layers")
            old = int(parts[pos + 1])
            if old not in layers:
                continue
            parts[pos + 1] = str(layers.index(old))
        state[".".join(parts)] = tensor.clone()
    student.load_state_dict(state, strict=True)
    return student


def model_from_sizes(teacher, sizes: dict, seed: int):
    """A randomly initialised model of the teacher's architecture and vocabulary with `sizes`."""
    config = teacher.config.__class__.from_dict(teacher.config.to_dict())
    for key, value in sizes.items():
        if not hasattr(config, key):
            raise InputError(
                f"models.student.sizes.{key}: `{type(config).__name__}` has no such field. Fix: "
                "use config fields such as hidden_size, num_hidden_layers, num_attention_heads, "
                "num_key_value_heads, intermediate_size, head_dim."
            )
        setattr(config, key, value)
    if "hidden_size" in sizes and "head_dim" not in sizes and hasattr(config, "head_dim"):
        config.head_dim = config.hidden_size // config.num_attention_heads
    if getattr(config, "layer_types", None):  # per-layer attention kinds must match the depth
        config.layer_types = [config.layer_types[0]] * config.num_hidden_layers
    torch.manual_seed(seed)
    return type(teacher)(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True, help="teacher model directory")
    parser.add_argument(
        "--spec", required=True, help='JSON: {"method": "layers"|"sizes"|"source", ...}'
    )
    parser.add_argument("--seed", type=int, required=True, help="config `seed`")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    log = setup_logging()
    spec = json.loads(args.spec)

    teacher, tokenizer = load_source(args.teacher)
    method = spec.get("method") or next(k for k in ("layers", "sizes", "source") if k in spec)
    if method == "source":
        if not spec.get("source"):
            raise InputError(
                "models.student.method is `source` but models.student.source is empty."
            )
        student, student_tok = load_source(spec["source"])
        check_same_tokenizer(tokenizer, student_tok, args.teacher, spec["source"])
        how = f"source {spec['source']}"
    elif method == "layers":
        student = slice_teacher(teacher, list(spec["layers"]))
        how = f"teacher layers {spec['layers']}"
    elif method == "sizes":
        student = model_from_sizes(teacher, dict(spec["sizes"]), args.seed)
        how = f"sizes {spec['sizes']} (random init, seed {args.seed})"
    else:
        raise InputError(
            f"models.student.method `{method}`: choose `layers` (a slice of the teacher), `sizes` "
            "(a fresh model of the teacher's architecture) or `source` (an existing model)."
        )
    n_params = sum(p.numel() for p in student.parameters())
    info = {"built_from": how, "teacher": str(Path(args.teacher)), "parameters": n_params}
    save_model(student, tokenizer, args.out, extra=info)
    log.info("student from %s: %.1fM parameters -> %s", how, n_params / 1e6, args.out)


if __name__ == "__main__":
    main_guard(main)
