"""Parallel layouts (TP/PP/DP/EP) and their validity checks."""

from __future__ import annotations

from simkit.errors import ScenarioError
from simkit.scenario import Parallel
from simkit.specs.model import ModelSpec
from simkit.specs.node import Node


def check_parallel(model: ModelSpec, node: Node, par: Parallel, where: str | None = None) -> None:
    """Reject layouts that cannot run, with a message saying why."""
    key = "plan.parallel"
    if model.num_heads % par.tp:
        raise ScenarioError(f"tp={par.tp} does not divide the {model.num_heads} attention heads of {model.name}", where=where, key=f"{key}.tp")
    if par.tp > model.num_kv_heads and par.tp % model.num_kv_heads:
        raise ScenarioError(
            f"tp={par.tp} is neither a divisor nor a multiple of the {model.num_kv_heads} KV heads of {model.name}",
            where=where,
            key=f"{key}.tp",
        )
    if par.tp <= model.num_kv_heads and model.num_kv_heads % par.tp:
        raise ScenarioError(f"tp={par.tp} does not divide the {model.num_kv_heads} KV heads of {model.name}", where=where, key=f"{key}.tp")
    if par.pp > model.num_layers:
        raise ScenarioError(f"pp={par.pp} exceeds the {model.num_layers} layers of {model.name}", where=where, key=f"{key}.pp")
    if par.pp > 1:
        raise ScenarioError("pipeline parallelism (pp > 1) is not available in this build", where=where, key=f"{key}.pp")
    if par.ep > 1 and model.moe is None:
        raise ScenarioError(f"ep={par.ep} needs an MoE model; {model.name} is dense", where=where, key=f"{key}.ep")
    if par.ep > 1:
        raise ScenarioError("expert parallelism (ep > 1) is not available in this build", where=where, key=f"{key}.ep")
    gpus = par.tp * par.pp * par.replicas
    if node.gpu is not None and gpus > node.num_gpus:
        raise ScenarioError(
            f"the plan needs {gpus} GPUs (tp {par.tp} x pp {par.pp} x replicas {par.replicas}) but {node.name} has {node.num_gpus}",
            where=where,
            key=key,
        )
