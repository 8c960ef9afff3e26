"""The built-in engine's side of tensor parallelism (engines/ranks.py starts the processes).

Each rank joins torch.distributed (NCCL on CUDA, gloo on the CPU) from torchrun's variables, and
the model is sharded by transformers' own tensor-parallel plan for its architecture
(`base_model_tp_plan`: the attention projections and MLP split by columns then rows, one
all-reduce after each; the embedding and LM head split by vocabulary): with `--weights auto` as
transformers loads it (`DistributedConfig(tp_size=N)`), with dummy weights by building the whole
model from the run's seed on every rank, so every rank holds the same numbers, and keeping each
rank's shard of it (`apply_tensor_parallelism`, which slices without communicating).

The engine decides some things by the clock (when a point stops admitting requests). Those
decisions are rank 0's, broadcast over a gloo group of CPU tensors, so that following them never
makes a GPU wait; everything else the engine decides follows from the plan, the same on every rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from carbontop.errors import EngineUnavailable


@dataclass
class Ranks:
    """This process's place among the ranks, and the group their decisions travel over."""

    rank: int = 0
    world: int = 1
    group: Any = None  # a gloo process group (CPU tensors)

    def follow(self, value: bool) -> bool:
        """Rank 0's `value`, on every rank."""
        if self.world == 1:
            return value
        import torch
        import torch.distributed as dist

        flag = torch.tensor([int(value)], dtype=torch.int32)
        dist.broadcast(flag, src=0, group=self.group)
        return bool(flag.item())

    def any(self, value: bool) -> bool:
        """True on every rank where `value` is True on any (a fallback one rank needed)."""
        if self.world == 1:
            return value
        import torch
        import torch.distributed as dist

        flag = torch.tensor([int(value)], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        return bool(flag.item())


def join(torch: Any, device_type: str) -> tuple[Ranks, Any]:
    """Join the ranks' process group (torchrun's variables, set by engines/ranks.py); this
    rank's (Ranks, device)."""
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if device_type == "cuda":
        if torch.cuda.device_count() <= local:
            raise EngineUnavailable(
                f"Tensor-parallel rank {rank} needs GPU {local} of the GPUs named, but torch sees "
                f"{torch.cuda.device_count()}.")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", rank=rank, world_size=world, device_id=device)
        # the decisions go over gloo, on the CPU: a broadcast over NCCL would make the host wait
        # for every GPU step queued before it
        group = dist.new_group(backend="gloo")
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo", rank=rank, world_size=world)
        group = dist.group.WORLD
    return Ranks(rank, world, group), device


def distributed_config(world: int) -> Any:
    from transformers.distributed import DistributedConfig

    return DistributedConfig(tp_size=world)


def shard(model: Any, world: int, device_type: str) -> Any:
    """The whole model (the same numbers on every rank) cut to this rank's shard by its
    architecture's tensor-parallel plan, over a mesh of the engine's device type (not whatever
    accelerator torch sees: ranks on the CPU of a GPU machine stay on the CPU)."""
    from torch.distributed.device_mesh import init_device_mesh
    from transformers.distributed.parallel_utils import replace_layer_number_by_wildcard
    from transformers.distributed.tensor_parallel import apply_tensor_parallelism

    check_plan(model)
    plan = model.tp_plan  # "model.layers.*.self_attn.q_proj" -> "colwise", ...
    concrete: dict[str, str] = {}
    for name, module in model.named_modules():
        style = plan.get(replace_layer_number_by_wildcard(name))
        if style is None:
            continue
        # a module's own parameters are sharded first, then its forward is wrapped
        for param, _ in module.named_parameters(recurse=False):
            concrete[f"{name}.{param}"] = style
        concrete[name] = style
    mesh = init_device_mesh(device_type, (world,), mesh_dim_names=("tp",))
    return apply_tensor_parallelism(model, mesh, concrete)


def check_plan(model: Any) -> None:
    if not model.tp_plan:
        raise EngineUnavailable(
            f"transformers has no tensor-parallel plan for {type(model).__name__}; run it with --tp 1.")


def local_kv_heads(model: Any, kv_heads: int, world: int) -> int:
    """Key-value heads this rank holds: the plan shards them over the ranks."""
    if world == 1:
        return kv_heads
    from transformers.distributed.tensor_parallel import get_kv_heads_per_rank

    local = get_kv_heads_per_rank(model.tp_plan, kv_heads, world)
    if not isinstance(local, int):
        raise EngineUnavailable(f"{kv_heads} key-value heads cannot be shared evenly by {world} ranks.")
    return local


def leave() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
