"""distill.distributed: the sharded optimizer state and the objective's gradients across processes.

accelerate runs FSDP on GPUs only (distill.distributed's docstring says what fails on CPUs), but
torch's own FSDP1 and FSDP2 run on gloo: the optimizer-state helpers that the training loop uses
under accelerate's FSDP are checked here with torch's sharding on two CPU processes.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from accelerate import Accelerator

from distill.distributed import ACCELERATE_CONFIGS, clip_gradients, fsdp_environment

# One script, run by torchrun on 2 gloo processes: 3 AdamW steps of a tiny tied-embedding Llama
# unsharded (the reference) and sharded with a checkpoint after step 2 (saved through
# full_optimizer_state, loaded into a fresh sharded model through load_full_optimizer_state).
SHARDED_RESUME = textwrap.dedent(
    """
    import copy, functools, sys, torch, torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions, get_model_state_dict, set_model_state_dict)
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer
    from distill.distributed import full_optimizer_state, load_full_optimizer_state

    kind, folder = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    config = LlamaConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, tie_word_embeddings=True)
    x = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(1))

    def fresh():
        torch.manual_seed(0)
        return LlamaForCausalLM(config)

    def shard(model):
        if kind == "fsdp2":
            from torch.distributed.fsdp import fully_shard
            for layer in model.model.layers:
                fully_shard(layer)
            return fully_shard(model)
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
        policy = functools.partial(transformer_auto_wrap_policy,
                                   transformer_layer_cls={LlamaDecoderLayer})
        return FSDP(model, auto_wrap_policy=policy, use_orig_params=True,
                    device_id=torch.device("cpu"))

    def steps(model, optimizer, n):
        for _ in range(n):
            model(input_ids=x, labels=x).loss.backward()  # same batch on both ranks
            optimizer.step()
            optimizer.zero_grad()

    def adamw(model):
        return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)

    # Weights without cpu_offload: FSDP1 on gloo segfaults gathering them with it (torch 2.13).
    full = StateDictOptions(full_state_dict=True)
    reference = fresh()
    ref_opt = adamw(reference)
    steps(reference, ref_opt, 2)
    # deepcopy: unsharded, the returned dict shares its tensors with the live optimizer.
    ref_state = copy.deepcopy(full_optimizer_state(reference, ref_opt))
    steps(reference, ref_opt, 1)

    model = shard(fresh())
    optimizer = adamw(model)
    steps(model, optimizer, 2)
    saved = full_optimizer_state(model, optimizer)  # a collective; rank 0 gets the dict
    weights = get_model_state_dict(model, options=full)
    if rank == 0:
        torch.save({"optimizer": saved, "model": weights}, f"{folder}/ckpt.pt")
        assert saved["state"].keys() == ref_state["state"].keys(), saved["state"].keys()
        for name, moments in ref_state["state"].items():
            for k, v in moments.items():
                assert torch.allclose(saved["state"][name][k], v, atol=1e-6), (name, k)
    dist.barrier()

    state = torch.load(f"{folder}/ckpt.pt", weights_only=False)
    resumed = shard(fresh())
    set_model_state_dict(resumed, state["model"], options=StateDictOptions(full_state_dict=True))
    resumed_opt = adamw(resumed)
    load_full_optimizer_state(resumed, resumed_opt, state["optimizer"])
    steps(resumed, resumed_opt, 1)
    final = get_model_state_dict(resumed, options=full)
    if rank == 0:
        for name, value in reference.state_dict().items():
            assert torch.allclose(final[name], value, atol=1e-5), name
        print("resumed equals uninterrupted", flush=True)
    dist.destroy_process_group()
    """
)

# The objective's parameters start from rank 0's values (broadcast_parameters) and get a different
# gradient on each process; after average_gradients and one AdamW step they are the same on both,
# the mean gradient having been applied.
AVERAGED = textwrap.dedent(
    """
    import torch
    from accelerate import Accelerator
    from distill.distributed import average_gradients, broadcast_parameters

    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    torch.manual_seed(rank)  # each rank initialises under its own seed, as in distill.train
    projection = torch.nn.Linear(3, 2)
    broadcast_parameters(list(projection.parameters()), accelerator)
    start = accelerator.gather(projection.weight.detach().flatten()[None])
    assert torch.equal(start[0], start[1])
    optimizer = torch.optim.AdamW(projection.parameters(), lr=0.1)
    x = torch.full((1, 3), float(rank + 1))
    projection(x).square().sum().backward()
    grads = [p.grad.clone() for p in projection.parameters()]
    average_gradients(list(projection.parameters()), accelerator)
    optimizer.step()
    weights = torch.cat([p.detach().flatten() for p in projection.parameters()])
    everyone = accelerator.gather(weights[None])
    assert torch.equal(everyone[0], everyone[1]), everyone
    local = accelerator.gather(torch.cat([g.flatten() for g in grads])[None])
    assert not torch.allclose(local[0], local[1])  # the ranks did see different gradients
    averaged = torch.cat([p.grad.flatten() for p in projection.parameters()])
    assert torch.allclose(averaged, local.mean(0), atol=1e-6)
    if rank == 0:
        print("identical on both ranks", flush=True)
    """
)


def torchrun(tmp_path, script: str, *args: str) -> str:
    path = tmp_path / "script.py"
    path.write_text(script)
    port = str(29600 + os.getpid() % 1000)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", port, str(path), *args],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow  # two gloo processes, about 15 s each
@pytest.mark.parametrize("kind", ["fsdp1", "fsdp2"])
def test_sharded_optimizer_state_resumes_like_an_uninterrupted_run(kind, tmp_path):
    assert "resumed equals uninterrupted" in torchrun(tmp_path, SHARDED_RESUME, kind, tmp_path)


@pytest.mark.slow  # two gloo processes, about 10 s
def test_objective_parameters_are_identical_on_both_ranks_after_a_step(tmp_path):
    assert "identical on both ranks" in torchrun(tmp_path, AVERAGED)


def test_clip_gradients_clips_model_and_objective_together():
    """Against the global norm over all parameters, computed here in float64."""
    torch.manual_seed(0)
    model, extra = torch.nn.Linear(4, 3).double(), [torch.nn.Parameter(torch.randn(5).double())]
    for p in [*model.parameters(), *extra]:
        p.grad = torch.randn_like(p) * 3
    expected = [p.grad.clone() for p in [*model.parameters(), *extra]]
    norm = math.sqrt(sum(float((g**2).sum()) for g in expected))
    reference = [g * min(1.0, 1.0 / (norm + 1e-6)) for g in expected]
    total = clip_gradients(Accelerator(cpu=True), model, extra, max_norm=1.0)
    assert total == pytest.approx(norm, rel=1e-9)
    assert total > 1.0  # the test clips
    for p, r in zip([*model.parameters(), *extra], reference, strict=True):
        assert torch.allclose(p.grad, r, rtol=1e-9)


def test_fsdp_environment_matches_what_accelerate_launch_sets(monkeypatch):
    """torchrun processes get the FSDP settings that `accelerate launch --config_file
    workflow/accelerate/fsdp.yaml` gives its processes (accelerate's own launch code is the
    reference here)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    config = ACCELERATE_CONFIGS / "fsdp.yaml"
    for key in [k for k in os.environ if k.startswith(("FSDP_", "ACCELERATE_"))]:
        monkeypatch.delenv(key)
    parser = launch_command_parser()
    args = parser.parse_args(["--config_file", str(config), "--num_processes", "2", "x.py"])
    launched = prepare_multi_gpu_env(_validate_launch_command(args)[0])
    # FSDP_MIN_NUM_PARAMS sizes the size-based wrap policy only; fsdp.yaml wraps by layer class.
    expected = {k: v for k, v in launched.items()
                if k.startswith("FSDP_") and k != "FSDP_MIN_NUM_PARAMS"}  # fmt: skip
    expected["ACCELERATE_USE_FSDP"] = launched["ACCELERATE_USE_FSDP"]
    assert fsdp_environment(config) == expected
    assert expected["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT"  # the reference read the file
