"""FLOPs of a compiled train step, for MFU: XLA's count of all its ops (``compiled_flops``)
and the count of its matrix products alone (``matmul_flops``, what MFU divides)."""
from __future__ import annotations

import math
import re


def compiled_flops(compiled) -> float:
    """XLA's FLOP count of a compiled executable, per device (0 if the backend gives none);
    a scanned layer stack's body is counted once (``Task.uncounted_flops`` adds the rest).
    It counts every op: elementwise work and integer hashing too (:func:`matmul_flops`)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float((cost or {}).get("flops", 0.0))


_HLO_DEF = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = \w+\[([\d,]*)\]\S* (\w[\w\-]*)\((.*)$")
_HLO_PARAM = re.compile(r"%?([\w.\-]+): \w+\[([\d,]*)\]")


def matmul_flops(hlo_text: str) -> float:
    """FLOPs of the matrix products in an HLO module's text: 2 x (output elements) x (the
    contracted size) for every ``dot``, 2 x (output elements) x (kernel input features x
    window) for every ``convolution``; each instruction once, so a while loop's body (a
    scanned layer stack) counts once, as in :func:`compiled_flops`.

    MFU is quoted on these, the model's FLOPs: XLA's own count adds the elementwise work
    (norms, softmax, dropout's random-bit hashing, the optimizer), 1.9 G of the mini align
    step's 25.3 G (docs/performance.md). Give it the text before XLA's optimisations
    (``jax.jit(f).lower(...).as_text(dialect="hlo")``): the same on every backend, where a
    GPU's compiled module calls its matmuls as cuBLAS custom calls. A sharded step's text
    before partitioning has the global shapes: the FLOPs of the whole step.
    """
    shapes: dict[str, list[int]] = {}
    products = []
    for line in hlo_text.splitlines():
        for name, dims in _HLO_PARAM.findall(line) if "->" in line and "{" in line and " = " not in line else ():
            shapes[name] = [int(d) for d in dims.split(",") if d]
        m = _HLO_DEF.match(line)
        if not m:
            continue
        name, dims, op, rest = m.groups()
        shapes[name] = [int(d) for d in dims.split(",") if d]
        if op in ("dot", "convolution"):
            # Operands by name (the optimised text also prints their shapes: skip those words).
            operands = [w for w in re.findall(r"[\w.\-]+", rest.split(")", 1)[0]) if w in shapes]
            products.append((op, shapes[name], operands[:2], rest))
    total = 0.0
    for op, out, (lhs, rhs), rest in products:
        if op == "dot":
            contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest).group(1)
            inner = math.prod(shapes[lhs][int(d)] for d in contracting.split(",") if d)
        else:  # kernel dims labelled e.g. "01io": window dims, input and output features
            kernel_labels = re.search(r"dim_labels=\w+_(\w+)->", rest).group(1)
            inner = math.prod(size for size, label in zip(shapes[rhs], kernel_labels) if label != "o")
        total += 2.0 * math.prod(out) * inner
    return total
