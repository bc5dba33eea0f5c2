"""Time the offloading systems' host (CPU) decode attention codes on this machine.

    python benchmarks/host_attention_codes.py [--threads N] [--rounds R]

simkit prices a decode step's attention on the host CPU as the bytes each system's code moves in
host memory (simkit/cost/offload.py ``host_attention_bytes``), relative to FlexGen's code, whose
rate was measured on the T4 VM. This script checks those relative costs by running, with
PyTorch on this machine's CPU, the tensor operations each code performs for one layer and one
decode step (read from the systems' sources; docs/offloading.md names them):

- ``flexgen``: FlexGen's CPU attention (``--cpu-cache-compute``): an fp16 cache laid out
  (positions, batch x heads, head dim); its filled prefix is upcast into a preallocated fp32
  workspace (flex_opt.py ``load_cache`` path 1, ``next_attention_compute_workspace``: two
  buffers allocated once per run), on which mha_gen's ``.float()`` is a no-op; two ``bmm`` over
  strided views.
- ``zero-opt``: ZeRO-Inference's OPT fork: an fp32 host buffer (batch, heads, max length, head
  dim), the filled slice viewed as (batch x heads, length, head dim) and read in place by ``bmm``.
- ``zero-llama``: ZeRO-Inference's LLaMA fork: an fp32 buffer of the KV heads; ``repeat_kv``
  expands each to its group of query heads into a fresh fp32 tensor, then 4-D ``matmul``.
- ``zero-bloom``: ZeRO-Inference's BLOOM fork: an fp16 buffer, keys (batch x heads, head dim,
  max length) and values (batch x heads, max length, head dim), the filled slices upcast to
  fresh fp32 copies, ALiBi ``baddbmm`` then ``bmm``.

It prints, per code, nanoseconds per cached element and query head (the minimum over rounds,
every code run once per round, interleaved) split by operation, the ratio to FlexGen's code and
the ratio simkit's byte model gives (without the fresh temporaries' cost: simkit adds that at
the node's measured first-touch rate, ``plan.offload.host_temporaries``); and the cost of
writing a freshly allocated tensor (the forks' upcast and repeat_kv copies above are each one:
glibc serves allocations above 32 MiB with mmap, so every first write page-faults and the kernel
zero-fills the page) against writing a reused one (FlexGen's workspace).
The machine is whatever runs this (measured figures are noisy on a shared machine; the ratios
within one run are the figures to read).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

CODES = ("flexgen", "zero-opt", "zero-llama", "zero-bloom")


@dataclass(frozen=True)
class Shape:
    """One layer's decode step: ``batch`` sequences of ``length`` cached positions in a buffer of
    ``max_length``, ``heads`` query heads (``kv_heads`` KV heads) of ``head_dim``."""

    batch: int
    heads: int
    kv_heads: int
    length: int
    max_length: int
    head_dim: int


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def make_step(code: str, shape: Shape, seed: int = 0) -> Callable[[], tuple[dict[str, float], Any]]:
    """A function running one decode step of ``code``'s host attention on random data; it returns
    the seconds of each operation and the attention output as (batch, heads, head_dim) fp32. All
    codes see the same queries, keys and values (per query head) for one ``seed``."""
    import torch

    F = torch.nn.functional
    b, nh, kvh, s, smax, d = shape.batch, shape.heads, shape.kv_heads, shape.length, shape.max_length, shape.head_dim
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, nh, d, generator=g)
    # the cached keys and values of the KV heads, (batch, kv heads, max length, head dim), fp16-exact
    k = torch.randn(b, kvh, smax, d, generator=g).half().float()
    v = torch.randn(b, kvh, smax, d, generator=g).half().float()
    scale = 1.0 / math.sqrt(d)
    if code in ("flexgen", "zero-opt", "zero-bloom") and kvh != nh:
        raise ValueError(f"{code}: a multi-head code (heads {nh} != kv heads {kvh})")
    if code == "flexgen":
        kc = k.permute(2, 0, 1, 3).reshape(smax, b * nh, d).half().contiguous()
        vc = v.permute(2, 0, 1, 3).reshape(smax, b * nh, d).half().contiguous()
        qf = q.reshape(b * nh, 1, d)
        keep = torch.ones(b, 1, 1, s, dtype=torch.bool)
        kw = torch.zeros(smax, b * nh, d)  # the reused fp32 workspace (written once here: faulted in)
        vw = torch.zeros(smax, b * nh, d)

        def step() -> tuple[dict[str, float], Any]:
            t: dict[str, float] = {}
            t["k upcast"], kk = _timed(lambda: kw[:s].copy_(kc[:s]))
            t["v upcast"], vv = _timed(lambda: vw[:s].copy_(vc[:s]))
            t["q.k"], w = _timed(lambda: torch.bmm(qf, kk.permute(1, 2, 0).reshape(b * nh, d, s)) * scale)
            t["softmax"], p = _timed(
                lambda: F.softmax(torch.where(keep, w.view(b, nh, 1, s), -1e4).view(b * nh, 1, s), dim=2)
            )
            t["p.v"], o = _timed(lambda: torch.bmm(p, vv.permute(1, 0, 2).reshape(b * nh, s, d)))
            return t, o.view(b, nh, d)

        return step
    if code == "zero-opt":
        kc, vc = k.contiguous(), v.contiguous()
        qf = (q * scale).reshape(b * nh, 1, d)
        mask = torch.zeros(b, 1, 1, s)

        def step() -> tuple[dict[str, float], Any]:
            t: dict[str, float] = {}
            ks = kc[:, :, :s].view(b * nh, -1, d)
            vs = vc[:, :, :s].view(b * nh, -1, d)
            t["q.k"], w = _timed(lambda: torch.bmm(qf, ks.transpose(1, 2)))
            t["softmax"], p = _timed(
                lambda: F.softmax(
                    torch.max(w.view(b, nh, 1, s) + mask, torch.tensor(torch.finfo(w.dtype).min)).view(b * nh, 1, s),
                    dim=-1,
                )
            )
            t["p.v"], o = _timed(lambda: torch.bmm(p, vs))
            return t, o.view(b, nh, d)

        return step
    if code == "zero-llama":
        kc, vc = k.contiguous(), v.contiguous()
        grp = nh // kvh
        qf = q.reshape(b, nh, 1, d)
        mask = torch.zeros(b, 1, 1, s)

        def repeat(x: Any) -> Any:
            return x[:, :, None].expand(b, kvh, grp, s, d).reshape(b, nh, s, d)

        def step() -> tuple[dict[str, float], Any]:
            t: dict[str, float] = {}
            t["k repeat_kv"], kk = _timed(lambda: repeat(kc[:, :, :s]))
            t["v repeat_kv"], vv = _timed(lambda: repeat(vc[:, :, :s]))
            t["q.k"], w = _timed(lambda: torch.matmul(qf, kk.transpose(2, 3)) / math.sqrt(d))
            t["softmax"], p = _timed(lambda: F.softmax(w + mask, dim=-1, dtype=torch.float32))
            t["p.v"], o = _timed(lambda: torch.matmul(p, vv))
            return t, o.view(b, nh, d)

        return step
    if code == "zero-bloom":
        kc = k.reshape(b * nh, smax, d).transpose(1, 2).half().contiguous()  # (b x heads, head dim, max length)
        vc = v.reshape(b * nh, smax, d).half().contiguous()
        qf = q.reshape(b * nh, 1, d)
        alibi = torch.zeros(b * nh, 1, s)
        masked = torch.zeros(b, 1, 1, s, dtype=torch.bool)

        def step() -> tuple[dict[str, float], Any]:
            t: dict[str, float] = {}
            t["k upcast"], kk = _timed(lambda: kc[:, :, :s].float())
            t["v upcast"], vv = _timed(lambda: vc[:, :s].float())
            t["q.k"], w = _timed(lambda: alibi.baddbmm(batch1=qf, batch2=kk, beta=1.0, alpha=scale))
            t["softmax"], p = _timed(
                lambda: F.softmax(
                    torch.masked_fill(w.view(b, nh, 1, s), masked, torch.finfo(w.dtype).min), dim=-1, dtype=torch.float32
                ).view(b * nh, 1, s)
            )
            t["p.v"], o = _timed(lambda: torch.bmm(p, vv))
            return t, o.view(b, nh, d)

        return step
    raise ValueError(f"unknown code {code!r}; expected one of {', '.join(CODES)}")


def reference_attention(shape: Shape, seed: int = 0) -> Any:
    """softmax(q k^T / sqrt(d)) v over the first ``length`` positions, each query head attending
    its KV head, on the data :func:`make_step` generates for ``seed`` (float64)."""
    import torch

    b, nh, kvh, s, smax, d = shape.batch, shape.heads, shape.kv_heads, shape.length, shape.max_length, shape.head_dim
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, nh, d, generator=g).double()
    k = torch.randn(b, kvh, smax, d, generator=g).half().double()[:, :, :s]
    v = torch.randn(b, kvh, smax, d, generator=g).half().double()[:, :, :s]
    k = k.repeat_interleave(nh // kvh, dim=1)
    v = v.repeat_interleave(nh // kvh, dim=1)
    w = torch.softmax(torch.einsum("bhd,bhsd->bhs", q, k) / math.sqrt(d), dim=-1)
    return torch.einsum("bhs,bhsd->bhd", w, v)


def time_codes(shapes: dict[str, Shape], rounds: int) -> dict[str, dict[str, float]]:
    """Seconds per cached element and query head of each code's operations: the minimum over
    ``rounds`` (each round runs every code once, in turn, after one untimed warm-up step)."""
    steps = {code: make_step(code, shape) for code, shape in shapes.items()}
    best: dict[str, dict[str, float]] = {}
    for r in range(rounds + 1):
        for code, step in steps.items():
            parts, _ = step()
            if r == 0:
                continue
            sh = shapes[code]
            n = sh.batch * sh.heads * sh.length * sh.head_dim
            for op, sec in parts.items():
                cur = best.setdefault(code, {}).get(op)
                best[code][op] = sec / n if cur is None else min(cur, sec / n)
    return best


def fresh_write_cost(mib: int, rounds: int) -> dict[str, float]:
    """Seconds per element (fp32 out) of an fp16 -> fp32 upcast and of an fp32 copy, into a freshly
    allocated tensor and into a reused one, and of reading the fp32 tensor (a sum); minimum over
    ``rounds``."""
    import torch

    n = (mib << 20) // 4
    half = torch.randn(n).half()
    f32 = torch.randn(n)
    out = torch.zeros(n)
    cases: dict[str, Callable[[], Any]] = {
        "upcast, fresh": lambda: half.float(),
        "upcast, reused": lambda: out.copy_(half),
        "fp32 copy, fresh": lambda: f32.clone(),
        "fp32 copy, reused": lambda: out.copy_(f32),
        "fp32 read": lambda: f32.sum(),
    }
    best: dict[str, float] = {}
    for r in range(rounds + 1):
        for name, fn in cases.items():
            sec, _ = _timed(fn)
            if r:
                best[name] = min(best.get(name, sec), sec)
    return {k: v / n for k, v in best.items()}


def model_bytes(heads: int, kv_heads: int, fp32_cache: bool) -> float:
    """simkit's host bytes per cached element and query head for a code (the one home:
    ``OffloadCompute.host_attention_bytes``), over a 16-bit or an fp32 host cache."""
    from types import SimpleNamespace

    from simkit.cost.offload import HOST_ATTENTION_COMPUTE_BYTES, OffloadCompute

    # host_attention_bytes reads only the model's head counts from the cost model
    stub = SimpleNamespace(model=SimpleNamespace(num_heads=heads, num_kv_heads=kv_heads))
    oc = OffloadCompute(cost=stub)  # type: ignore[arg-type]
    return oc.host_attention_bytes(HOST_ATTENTION_COMPUTE_BYTES if fp32_cache else 2.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16, help="sequences (BLOOM's code: half, for its 112 heads)")
    args = ap.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    b = args.batch
    # prompt 512 + 8 generated of a 512 + 32 run (ZeRO-Inference's A6000 runs); heads of OPT-30B,
    # LLaMA-2-70B and BLOOM-176B; every large temporary is well above glibc's 32 MiB mmap threshold
    shapes = {
        "flexgen": Shape(b, 56, 56, 520, 543, 128),
        "zero-opt": Shape(b, 56, 56, 520, 543, 128),
        "zero-llama": Shape(b, 64, 8, 520, 543, 128),
        "zero-bloom": Shape(max(1, b // 2), 112, 112, 520, 543, 128),
    }
    model = {
        "flexgen": model_bytes(56, 56, False),
        "zero-opt": model_bytes(56, 56, True),
        "zero-llama": model_bytes(64, 8, True),
        "zero-bloom": model_bytes(112, 112, False),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    best = time_codes(shapes, args.rounds)
    ref = sum(best["flexgen"].values())
    print(f"{'code':12s} {'ns/elem':>8s} {'x flexgen':>9s} {'model':>6s}  operations (ns per cached element x query head)")
    for code, parts in best.items():
        tot = sum(parts.values())
        ops = "  ".join(f"{op} {sec * 1e9:.2f}" for op, sec in parts.items())
        print(f"{code:12s} {tot * 1e9:8.2f} {tot / ref:9.3f} {model[code] / model['flexgen']:6.3f}  {ops}")
    fw = fresh_write_cost(512, args.rounds)
    print("512 MiB, ns per fp32 element written: " + "  ".join(f"{k} {v * 1e9:.3f}" for k, v in fw.items()))
    read_byte = fw["fp32 read"] / 4.0
    extra = (fw["upcast, fresh"] - fw["upcast, reused"]) / 4.0
    print(f"a freshly written byte costs {extra / read_byte:.1f} read bytes more than a reused one")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
