"""Vidur's scheduler with simkit's step prices: run in Vidur's venv by vidur_side_by_side.py --decompose.

    <vidur python> benchmarks/vidur_simkit_prices.py CASE HOST BATCHES_CSV -- <python -m vidur.main's arguments>

Vidur 0.0.26 (``python -m vidur.main``) runs with every batch's execution time replaced by what
simkit's cost model (``IterationModel.step_time``) gives for that batch, with simkit's host
overhead per iteration set to ``HOST`` (a time with its unit, e.g. ``0 s``) (``plan.execution.iteration_overhead``; ``-``:
the profile's own). Every batch's composition is still Vidur's (its vLLM or Sarathi scheduler's
decisions), so comparing this run with Vidur's own isolates the step pricing, and comparing it
with simkit's run isolates the scheduler.

For each batch it also writes one row to ``BATCHES_CSV``: the batch's size, new tokens, prefill
sequences, and both simulators' time of that batch split by component (milliseconds, all
layers): Vidur's own prediction (its random forests on Vidur's ``mlp.csv`` and the attention
table the side-by-side script wrote) and simkit's ``breakdown`` of the same batch; and the total
of Vidur's C++ predictor (``use_native_execution_time_predictor``, on the same prediction
tables) for that batch, ``vidur_native_ms``. Vidur's
``num_kv_tokens`` of a sequence counts the batch's new tokens too; simkit's context is the tokens
cached before the step, so simkit is given ``num_kv_tokens - num_q_tokens``.

simkit must be importable (PYTHONPATH = the simkit checkout). Not a dependency of simkit: a
diagnostic for docs/fidelity.md's "Why simkit's latency medians differ from Vidur's".
"""

from __future__ import annotations

import copy
import csv
import sys
from pathlib import Path
from typing import Any

import numpy as np

# simkit's operators (simkit.cost.ops.OP_NAMES) -> the components of Vidur's ExecutionTime they
# match; simkit's "head" (embedding, final norm, LM head, sampling) and host time Vidur 0.0.26 does
# not price ("we are not counting the execution time for the embedding layer and last softmax
# layer", vidur/entities/execution_time.py)
GROUPS: dict[str, str] = {
    "qkv_proj": "linear", "o_proj": "linear", "mlp_up": "linear", "mlp_down": "linear",
    "moe_router": "linear", "moe_experts": "linear",
    "attn_prefill": "attn_prefill", "attn_decode": "attn_decode",
    "input_norm": "norm_act_add", "post_attn_norm": "norm_act_add", "rope": "norm_act_add", "mlp_act": "norm_act_add",
    "residual_add": "norm_act_add",
    "embedding": "head", "final_norm": "head", "lm_head": "head", "sampling": "head",
}
COLS = ("linear", "attn_prefill", "attn_decode", "norm_act_add", "head", "comm", "host", "other")


def _group(name: str) -> str:
    """The component of simkit's operator ``name`` ("other" for one not in GROUPS)."""
    return GROUPS.get(name, "other")


def simkit_cost(case: str, host: str) -> Any:
    """The IterationModel of ``case`` (benchmarks/serving_speed.py) with host overhead ``host``."""
    here = Path(__file__).resolve().parent
    sys.path.insert(0, str(here))
    import serving_speed  # type: ignore[import-not-found]

    from simkit.deployment import build_deployment
    from simkit.scenario import scenario_from_dict

    data = copy.deepcopy(serving_speed._case_data(case))
    if host != "-":
        data["plan"].setdefault("execution", {})["iteration_overhead"] = host
    return build_deployment(scenario_from_dict(data)).groups[0].cost


def main(argv: list[str]) -> None:
    if len(argv) < 4 or argv[3] != "--":
        sys.exit(__doc__.split("\n\n")[1])
    case, host, out_csv, vidur_args = argv[0], argv[1], Path(argv[2]), argv[4:]
    cost = simkit_cost(case, host)
    layers = cost.layers

    from vidur._native.entities import ExecutionTime as ExecutionTimeC
    from vidur.execution_time_predictor.base_execution_time_predictor import BaseExecutionTimePredictor

    own = BaseExecutionTimePredictor.get_execution_time
    f = out_csv.open("w", newline="")
    w = csv.writer(f)
    w.writerow(["batch", "tokens", "prefills", "kv_sum", *(f"vidur_{c}" for c in COLS), "vidur_ms",
                *(f"simkit_{c}" for c in COLS), "simkit_ms", "vidur_native_ms"])

    def priced(self: Any, batch: Any, pipeline_stage: int) -> Any:
        v = own(self, batch, pipeline_stage)
        if self._native_execution_time_predictor is None:  # Vidur's C++ predictor, on the same tables
            self._native_execution_time_predictor = self._init_native_execution_time_predictor()
        native_ms = self.get_execution_time_native(batch, pipeline_stage).total_time * 1e3
        q = np.asarray(batch.num_q_tokens, dtype=np.int64)
        ctx = np.asarray(batch.num_kv_tokens, dtype=np.int64) - q
        s_ms = cost.step_time(q, ctx) * 1e3
        vg = dict.fromkeys(COLS, 0.0)
        n = v.num_layers
        vg["linear"] = n * (v.attention_layer_pre_proj_execution_time + v.attention_layer_post_proj_execution_time + v.mlp_layer_up_proj_execution_time
                            + v.mlp_layer_down_proj_execution_time)
        vg["attn_prefill"] = n * v.attention_prefill_execution_time
        vg["attn_decode"] = n * v.attention_decode_execution_time
        vg["norm_act_add"] = n * (v.mlp_layer_act_execution_time + v.attn_norm_time + v.mlp_norm_time + v.add_time
                                  + v.attention_rope_execution_time)
        vg["comm"] = n * 2 * v.tensor_parallel_communication_time + v.pipeline_parallel_communication_time
        sg = dict.fromkeys(COLS, 0.0)
        for op in cost.breakdown(q, ctx):
            g = _group(op.op.name)
            if not g.startswith("attn_"):  # attention as step_time prices it (uneven contexts)
                sg[g] += op.time_s * op.op.count * 1e3
        dec = (q == 1) & (ctx > 0)
        sg["attn_decode"] = cost.attention_time(q[dec], ctx[dec]) * 1e3 if dec.any() else 0.0
        sg["attn_prefill"] = cost.attention_time(q[~dec], ctx[~dec]) * 1e3 if (~dec).any() else 0.0
        sg["host"] = cost.host_time(len(q)) * 1e3
        sg["other"] += s_ms - sum(sg.values())  # what the breakdown does not show (0 up to rounding)
        w.writerow([len(q), int(q.sum()), int((q > 1).sum()), int(ctx.sum()), *(f"{vg[c]:.6g}" for c in COLS),
                    f"{v.total_time * 1e3:.6g}", *(f"{sg[c]:.6g}" for c in COLS), f"{s_ms:.6g}", f"{native_ms:.6g}"])
        # the whole step in one term (Vidur's model_time = block time x layers, in ms)
        return ExecutionTimeC(layers, 0.0, 0.0, 0.0, s_ms / layers, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)

    BaseExecutionTimePredictor.get_execution_time = priced  # type: ignore[method-assign]
    sys.argv = ["vidur.main", *vidur_args]
    from vidur.main import main as vidur_main

    try:
        vidur_main()
    finally:
        f.close()


if __name__ == "__main__":
    main(sys.argv[1:])
