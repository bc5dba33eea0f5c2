"""Parallel layouts: tensor, pipeline, data and expert parallelism mapped onto GPUs and nodes.

Ranks are laid out replica-major, then stage, then TP rank: global GPU index
``g = (replica * pp + stage) * tp + tp_rank`` and node ``g // gpus_per_node``. A TP group
must sit inside one node (its all-reduces run over NVLink, or PCIe where the GPUs have no
NVLink) unless ``plan.parallel.cross_node_tp`` says otherwise; pipeline stages may sit on
different nodes (their activations then cross the network).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from simkit.errors import ScenarioError
from simkit.specs.model import ModelSpec
from simkit.specs.node import Node


class ParallelPlan(Protocol):
    """What a layout is made from (scenario.py's ``plan.parallel`` is one)."""

    @property
    def tp(self) -> int: ...
    @property
    def pp(self) -> int: ...
    @property
    def replicas(self) -> int: ...
    @property
    def ep(self) -> int: ...
    @property
    def layer_split(self) -> list[int] | None: ...
    @property
    def cross_node_tp(self) -> bool: ...


@dataclass(frozen=True)
class Layout:
    tp: int
    pp: int
    replicas: int
    ep: int
    layer_split: tuple[int, ...]
    gpus_per_node: int
    num_nodes: int

    def gpu(self, replica: int, stage: int, rank: int) -> int:
        return (replica * self.pp + stage) * self.tp + rank

    def node_of(self, gpu: int) -> int:
        return gpu // self.gpus_per_node if self.gpus_per_node else 0

    def tp_spans_nodes(self, replica: int, stage: int) -> bool:
        return self.node_of(self.gpu(replica, stage, 0)) != self.node_of(self.gpu(replica, stage, self.tp - 1))

    def pp_crosses_nodes(self, replica: int, stage: int) -> bool:
        """Whether the hop from ``stage`` to ``stage + 1`` leaves the node."""
        return self.node_of(self.gpu(replica, stage, 0)) != self.node_of(self.gpu(replica, stage + 1, 0))

    @property
    def gpus_per_replica(self) -> int:
        return self.tp * self.pp

    @property
    def total_gpus(self) -> int:
        return self.tp * self.pp * self.replicas


def split_layers(num_layers: int, pp: int) -> tuple[int, ...]:
    base, extra = divmod(num_layers, pp)
    return tuple(base + (1 if k < extra else 0) for k in range(pp))


def check_parallel(model: ModelSpec, node: Node, par: ParallelPlan, where: str | None = None) -> Layout:
    """Reject layouts that cannot run, with a message saying why; return the layout."""
    key = "plan.parallel"
    if model.num_heads % par.tp:
        raise ScenarioError(f"tp={par.tp} does not divide the {model.num_heads} attention heads of {model.name}", where=where, key=f"{key}.tp")
    if par.tp > model.num_kv_heads:
        if par.tp % model.num_kv_heads:
            raise ScenarioError(
                f"tp={par.tp} is neither a divisor nor a multiple of the {model.num_kv_heads} KV heads of {model.name}",
                where=where,
                key=f"{key}.tp",
            )
    elif model.num_kv_heads % par.tp:
        raise ScenarioError(f"tp={par.tp} does not divide the {model.num_kv_heads} KV heads of {model.name}", where=where, key=f"{key}.tp")
    if par.pp > model.num_layers:
        raise ScenarioError(f"pp={par.pp} exceeds the {model.num_layers} layers of {model.name}", where=where, key=f"{key}.pp")
    if par.layer_split is not None:
        ls = tuple(par.layer_split)
        if len(ls) != par.pp or any(x < 1 for x in ls) or sum(ls) != model.num_layers:
            raise ScenarioError(
                f"layer_split {list(ls)} must list pp={par.pp} positive layer counts summing to {model.num_layers}",
                where=where,
                key=f"{key}.layer_split",
            )
    else:
        ls = split_layers(model.num_layers, par.pp)
    if par.ep > 1:
        if model.moe is None:
            raise ScenarioError(f"ep={par.ep} needs an MoE model; {model.name} is dense", where=where, key=f"{key}.ep")
        if par.tp % par.ep:
            raise ScenarioError(f"ep={par.ep} must divide tp={par.tp} (experts are spread over a stage's GPUs)", where=where, key=f"{key}.ep")
        if model.moe.num_experts % par.ep:
            raise ScenarioError(f"ep={par.ep} does not divide the {model.moe.num_experts} experts of {model.name}", where=where, key=f"{key}.ep")
    if node.gpu is None:
        if par.tp * par.pp * par.replicas > 1:
            raise ScenarioError("tensor/pipeline parallelism and replicas need GPUs; this node computes on the CPU", where=where, key=key)
        return Layout(1, 1, 1, 1, ls, 0, node.num_nodes)
    gpus = par.tp * par.pp * par.replicas
    total = node.num_gpus * node.num_nodes
    if gpus > total:
        where_n = f"{node.num_nodes} x {node.name}" if node.num_nodes > 1 else node.name
        raise ScenarioError(
            f"the plan needs {gpus} GPUs (tp {par.tp} x pp {par.pp} x replicas {par.replicas}) but {where_n} has {total}",
            where=where,
            key=key,
        )
    lay = Layout(par.tp, par.pp, par.replicas, par.ep, ls, node.num_gpus, node.num_nodes)
    if not par.cross_node_tp:
        for r in range(par.replicas):
            for st in range(par.pp):
                if lay.tp_spans_nodes(r, st):
                    raise ScenarioError(
                        f"the TP group of replica {r}, stage {st} spans nodes (tp={par.tp} > {node.num_gpus} GPUs per node, or "
                        "misaligned); set plan.parallel.cross_node_tp: true to run its all-reduces over the network",
                        where=where,
                        key=f"{key}.tp",
                    )
    return lay


def expert_popularity(model: ModelSpec, distribution: str, skew: float) -> np.ndarray:
    """Probability that a routed token picks each expert: uniform, or Zipf (rank r gets r^-skew)."""
    assert model.moe is not None
    E = model.moe.num_experts
    if distribution == "uniform" or skew == 0:
        return np.full(E, 1.0 / E)
    p = np.arange(1, E + 1, dtype=np.float64) ** (-skew)
    return p / p.sum()


def expert_group_shares(model: ModelSpec, ep: int, distribution: str, skew: float) -> np.ndarray:
    """Expected share of routed tokens each of the ``ep`` expert groups receives.

    Experts are placed on groups round-robin by popularity rank (a balanced placement), so with
    uniform routing every group gets 1/ep and skew shows up only through the popular experts."""
    p = expert_popularity(model, distribution, skew)
    return np.bincount(np.arange(len(p)) % ep, weights=p, minlength=ep)

