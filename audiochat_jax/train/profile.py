"""Where a train step's time goes: a jax.profiler trace, summed by the model part of each op.

The trainer traces ``config.profile.steps`` steps from ``config.profile.start_step`` into
``WORKDIR/profile`` (open it with TensorBoard's profile plugin or ui.perfetto.dev) and logs
the op time per step by model part; ``bench/align_step.py --profile DIR`` does the same for
the bench's step. A part is the Flax module path that issued the op, with ``layers_N`` merged
(``AudioEmbedder/encoder/conv/depthwise_conv``) and `` bwd`` for the backward pass; XLA:CPU
runs independent ops side by side, so the parts can sum to more than the step's wall time.
Below it, the op time by kind of op (matmuls, XLA's loop fusions, library fusions, copies, ...)
with the bytes each kind's ops read and write (from the HLO's shapes), so that a kind's GB/s
can be set beside the memory's speed; then the 20 largest single HLO ops with their result
shapes and source ops say where a part's time goes (e.g. 31 separately written windows of one
depthwise conv).
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import math
import os
import re
import time
from typing import Any, Callable

import jax

STEP_OPS = "(step: loss, optimizer, ...)"  # ops issued outside any module
UNNAMED = "(no source op: XLA's copies, layouts, fused gradients)"  # no op_name metadata
# A GPU's kernels that ran inside CUDA graphs (XLA's command buffers, on by default) carry the
# graph's name, not their op's, and other executables' kernels have names outside the step.
UNMATCHED_DEVICE = "(device time not matched to a step op: CUDA graphs, other executables)"
# Device memcpys that name neither an HLO op of the step nor a source op. On an H100 the 7B
# step's ~1330 memcpys a step (31.6 ms at batch 4, stop 24) are XLA:GPU's asynchronous
# dynamic-slice / dynamic-update-slice fusions of the scanned LLM (a layer's weights sliced out
# of the stacked arrays, the remat residuals written into them). Their events name an HLO op
# that the compiled module's text does not hold (the async fusion's emitted name), but carry
# the source op in args.name: their time goes to that op's part, with COPIES appended.
DEVICE_COPIES = "(device memcpys the trace ties to no HLO op: XLA's copies)"
COPIES = " copies"  # appended to a part's name for its ops' device memcpys
NO_COMMAND_BUFFERS = "--xla_gpu_enable_command_buffer="


def hlo_computations(hlo_text: str) -> dict[str, list[str]]:
    """Computation name (fused bodies, loop bodies, ENTRY's) -> its instruction lines."""
    bodies, current = {}, None
    for line in hlo_text.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
        if head and not line.startswith(" "):
            current = bodies.setdefault(head.group(1), [])
        elif current is not None:
            current.append(line)
    return bodies


def hlo_op_names(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> the JAX op name in its metadata (a fusion: its first fused op's)."""
    bodies = hlo_computations(hlo_text)
    lines = {m.group(1): line for body in bodies.values() for line in body
             if (m := re.match(r"^\s*(?:ROOT )?%([\w.\-]+) = ", line))}
    names = {}
    for inst, line in lines.items():
        found = re.search(r'op_name="([^"]+)"', line)
        called = re.search(r"calls=%([\w.\-]+)", line)
        if not found and called:
            found = next((m for x in bodies.get(called.group(1), []) if (m := re.search(r'op_name="([^"]+)"', x))), None)
        names[inst] = found.group(1) if found else ""
    return names


def copied_donated_arrays(hlo_text: str) -> list[tuple[str, str]]:
    """``[(parameter, shape), ...]``: the donated inputs (those the compiled module aliases to an
    output, ``input_output_alias``) whose update is not made in place: the entry computation
    copies the input before its buffer is reused, or computes the new value elsewhere and
    copies it into that buffer (a ``copy`` in the root tuple at the aliased output). A train
    step that updates its state in place copies none but scalars; one that copies its
    parameters and optimizer moments reads and writes them twice, and on a GPU issues a memcpy
    per array."""
    header = hlo_text.split("\n", 1)[0]
    param_of_output = {int(o): int(p) for o, p in re.findall(r"\{(\d+)\}:\s*\((\d+),", header)}
    donated = set(param_of_output.values())
    entry = hlo_text[hlo_text.find("\nENTRY"):]
    params = {m.group(1): (int(m.group(3)), m.group(2)) for m in
              re.finditer(r"^\s*%([\w.\-]+) = (\S+) parameter\((\d+)\)", entry, re.M)}
    by_number = {number: (name, shape) for name, (number, shape) in params.items()}
    copy_of = {m.group(1): m.group(2) for m in
               re.finditer(r"^\s*(?:ROOT )?%([\w.\-]+) = \S+ copy\(%([\w.\-]+)\)", entry, re.M)}
    copied = {}
    for operand in copy_of.values():
        if operand in params and params[operand][0] in donated:
            copied[operand] = params[operand][1]
    root = re.search(r"^\s*ROOT %[\w.\-]+ = .* tuple\(([^)]*)\)", entry, re.M)
    outputs = re.findall(r"%([\w.\-]+)", root.group(1)) if root else []
    for index, name in enumerate(outputs):
        if name in copy_of and index in param_of_output:
            copied.setdefault(*by_number[param_of_output[index]])
    return sorted(copied.items())


def model_part(op_name: str) -> str:
    """'jit(step)/transpose(jvp(AudioEmbedder))/encoder/layers_2/conv/depthwise_conv/slice' ->
    'AudioEmbedder/encoder/conv/depthwise_conv bwd': the module path (layers merged, einsum
    specs and wrappers such as scan's while/body/closed_call dropped, at most 4 deep),
    `` bwd`` for the backward pass and `` remat`` for the forward ops it recomputes."""
    if not op_name:
        return UNNAMED
    head, _, rest = op_name.partition("/")
    if rest.startswith("(") and ":" in rest:  # ops XLA combined, "(a/op:b/op:...)": the first's
        op_name = head + "/" + rest[1:].split(":")[0]
    suffix = " remat" if "rematted_computation" in op_name else " bwd" if "transpose(" in op_name else ""
    path = op_name.split("/")[:-1]
    if path and re.match(r"p?jit\(", path[0]):  # the jitted function's own name
        path = path[1:]
    parts = [re.sub(r"transpose\(|jvp\(|jit\(|vmap\(|\)", "", p) for p in path]
    parts = [p for p in parts if p and "->" not in p and "," not in p and not re.fullmatch(
        r"layers_\d+|checkpoint|rematted_computation|_where|_pad|while|body|cond|closed_call", p)]
    # 'Llama/Llama.hidden_states' (a module, then its method) -> 'Llama.hidden_states'
    parts = [p for p, nxt in zip(parts, parts[1:] + [""]) if not nxt.startswith(p + ".")]
    return ("/".join(parts[:4]) or STEP_OPS) + suffix


def _step_op_times(trace_dir: str, hlo_texts) -> tuple[dict[str, str], collections.Counter, dict | None,
                                                       collections.Counter]:
    """``(names, busy, unmatched, runs)`` from the newest trace under ``trace_dir`` (written with
    ``create_perfetto_trace=True``): HLO instruction -> source op name for the executables
    whose HLO texts are ``hlo_texts``, total ms per HLO instruction, (on a GPU/TPU) the
    device ms that matched none of them, memcpys apart ({UNMATCHED_DEVICE: ms, DEVICE_COPIES:
    ms}; None on a CPU), and how many times each instruction ran (a scanned body's, once per
    iteration)."""
    traces = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    if not traces:
        raise FileNotFoundError(f"no *.trace.json.gz under {trace_dir}: was the trace written "
                                "with jax.profiler.start_trace(..., create_perfetto_trace=True)?")
    with gzip.open(max(traces, key=os.path.getmtime)) as f:
        events = json.load(f)["traceEvents"]
    # On a GPU/TPU the host's events for an op are its launch; the time is on the device's
    # own process ("/device:GPU:0"), whose kernels carry the HLO op in args.hlo_op (a GEMM
    # kernel's own name is cuBLAS's). XLA:CPU has only "/host:CPU", where the ops run.
    devices = {e["pid"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
               and str(e.get("args", {}).get("name", "")).startswith("/device:")}
    names = {}
    for text in hlo_texts:
        names.update(hlo_op_names(text))
    busy, runs = collections.Counter(), collections.Counter()
    unmatched = {UNMATCHED_DEVICE: 0.0, DEVICE_COPIES: 0.0} if devices else None
    # The jitted functions of these executables ("jit(step)"): a memcpy naming a source op under
    # one of them is theirs, one under another function (another executable's) is not.
    roots = {n.split("/")[0] for n in names.values() if n.startswith(("jit(", "pjit("))}
    for e in events:
        if e.get("ph") != "X" or (devices and e.get("pid") not in devices):
            continue
        args = e.get("args", {})
        op = args.get("hlo_op") or e["name"]
        copy = bool(devices) and e["name"].lower().startswith("memcpy")
        if copy and op not in names and str(args.get("name", "")).split("/")[0] in roots:
            names[op] = args["name"]  # an async fusion's copy: its source op (see COPIES)
        if op in names:  # an HLO op (thunk / kernel) of the step; not runtime/Python events
            busy[op + COPIES if copy else op] += e["dur"] / 1e3
            runs[op + COPIES if copy else op] += 1
        elif devices:
            kind = DEVICE_COPIES if e["name"].lower().startswith("memcpy") else UNMATCHED_DEVICE
            unmatched[kind] += e["dur"] / 1e3
    return names, busy, unmatched, runs


def op_time_by_part(trace_dir: str, hlo_texts, steps: int) -> list[tuple[str, float]]:
    """``[(part, ms per step)]``, largest first, from the newest trace under ``trace_dir``
    (written with ``create_perfetto_trace=True``) of ``steps`` steps of the executables whose
    HLO texts are ``hlo_texts``."""
    return _parts(*_step_op_times(trace_dir, hlo_texts), steps)


def _parts(names, busy, unmatched, _runs, steps: int) -> list[tuple[str, float]]:
    parts = collections.Counter()
    if unmatched is not None:  # listed even when 0: the table says it was a device trace
        parts[UNMATCHED_DEVICE] = unmatched[UNMATCHED_DEVICE] / steps
        if unmatched[DEVICE_COPIES]:
            parts[DEVICE_COPIES] = unmatched[DEVICE_COPIES] / steps
    for op, ms in busy.items():
        base = op.removesuffix(COPIES)
        parts[model_part(names[base]) + op[len(base):]] += ms / steps
    return parts.most_common()


def top_ops(trace_dir: str, hlo_texts, steps: int, top: int = 20) -> str:
    """The ``top`` single HLO ops by time per step, each with its result shape and source op:
    below the model-part table, where a part's time goes (e.g. 31 separate slices)."""
    return _top(*_step_op_times(trace_dir, hlo_texts), hlo_texts, steps, top)


def _top(names, busy, _unmatched, _runs, hlo_texts, steps: int, top: int = 20) -> str:
    shapes = {}
    for text in hlo_texts:
        shapes.update(re.findall(r"^\s*(?:ROOT )?%([\w.\-]+) = (\S+)", text, re.M))
    lines = [f"top {top} single ops per step (HLO op, result shape, source op):"]
    for op, ms in busy.most_common(top):
        base = op.removesuffix(COPIES)
        lines.append(f"  {ms / steps:8.2f} ms  {op:28s} {shapes.get(base, '?'):32s} {names[base][-100:] or '-'}")
    return "\n".join(lines)


# Kinds of op for the by-kind table (op_time_by_kind).
MATMUL = "matmuls: dots, convolutions (with what a library fusion fused into them)"
LIBRARY = "library fusions without a matmul (XLA:CPU's YNNPACK: elementwise, reductions)"
LOOP_FUSION = "XLA loop fusions (elementwise)"
REDUCTION_FUSION = "XLA reduction fusions"
COPY = "copies, transposes"
CONTROL = "while, conditional (their time spans their bodies' ops)"
# Bytes not counted: a dynamic slice reads, and an in-place update writes, part of its operand.
DYNAMIC_SLICE = "dynamic slices, in-place updates (a scan's per-step reads and writes)"
DEVICE_MEMCPY = "device memcpys"
NOT_IN_HLO = "ops not in the HLO text"
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
                "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\([^=]*?\)|\S+) ([a-z][\w\-]*)\((.*?)\)(?:,|$)")


def _shape_bytes(shape: str) -> int:
    """'f32[16,75,144]{2,1,0}' or a tuple of shapes -> bytes."""
    total = 0
    for dtype, dims in re.findall(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([\d,]*)\]", shape):
        total += _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
    return total


def op_time_by_kind(trace_dir: str, hlo_texts, steps: int) -> list[tuple[str, float, float, float | None]]:
    """``[(kind, runs, ms, MB)]`` per step, by ms: the traced ops grouped by what runs them
    (a matmul, a library fusion, an XLA loop fusion, a copy, ...).

    MB is what each run's operands and result take, as the HLO gives their shapes: the bytes
    the op would move reading each input once and writing its output, from memory or cache;
    None where the trace's op is not in the HLO text or has no such meaning (a loop's thunk,
    a dynamic slice, a device memcpy). MB / ms says how near each kind comes to the memory's
    speed: on the 2-core dev CPU the mini align step's elementwise fusions ran at 17-19 GB/s,
    where a lone in-place elementwise op over 2-256 MiB runs at 49-79 (docs/performance.md,
    stop 26)."""
    return _kinds(*_step_op_times(trace_dir, hlo_texts), hlo_texts, steps)


def _kinds(names, busy, _unmatched, runs, hlo_texts, steps: int):
    lines, bodies = {}, {}
    for text in hlo_texts:
        for name, body in hlo_computations(text).items():
            bodies[name] = []
            for line in body:
                line = re.sub(r"/\*index=\d+\*/", "", line)  # in long tuple shapes
                if m := _INSTRUCTION.match(line):
                    lines[m.group(1)] = (m, line)
                    bodies[name].append(line)
    shapes = {name: m.group(2) for name, (m, _) in lines.items()}
    memo: dict[str, set] = {}

    def body_ops(computation: str) -> set:
        """The opcodes in ``computation`` and what it calls ("matmul-call": a matmul custom call)."""
        if computation not in memo:
            memo[computation] = found = set()
            for line in bodies.get(computation, []):
                op = _INSTRUCTION.match(line).group(3)
                found.add("matmul-call" if op == "custom-call" and _matmul_call(line) else op)
                if called := re.search(r"calls=%([\w.\-]+)", line):
                    found |= body_ops(called.group(1))
        return memo[computation]

    table = collections.defaultdict(lambda: [0, 0.0, 0.0])
    for op, ms in busy.items():
        m, line = lines.get(op, (None, ""))
        if op.endswith(COPIES) or m is None:
            kind = DEVICE_MEMCPY if op.endswith(COPIES) else NOT_IN_HLO
        else:
            called = re.search(r"calls=%([\w.\-]+)", line)
            kind = _kind(m.group(3), line, body_ops(called.group(1)) if called else set())
        nbytes = None
        if kind not in (CONTROL, DYNAMIC_SLICE, DEVICE_MEMCPY, NOT_IN_HLO):
            operands = re.findall(r"%([\w.\-]+)", m.group(4))
            nbytes = _shape_bytes(m.group(2)) + sum(_shape_bytes(shapes.get(a, "")) for a in operands)
        row = table[kind]
        row[0] += runs[op]
        row[1] += ms
        row[2] = None if nbytes is None or row[2] is None else row[2] + nbytes * runs[op]
    rows = [(kind, n / steps, ms / steps, None if b is None else b / steps / 1e6)
            for kind, (n, ms, b) in table.items()]
    return sorted(rows, key=lambda r: -r[2])


def _matmul_call(line: str) -> bool:
    """A custom call that is a matmul or convolution (cuBLAS, cuDNN, oneDNN)."""
    target = re.search(r'custom_call_target="([^"]*)"', line)
    return bool(target and re.search(r"gemm|matmul|conv|dot", target.group(1), re.I))


def _kind(op: str, line: str, fused_ops: set) -> str:
    """The kind of the instruction ``line`` (opcode ``op``; ``fused_ops``: a fusion's opcodes)."""
    ops = fused_ops | {"matmul-call" if op == "custom-call" and _matmul_call(line) else op}
    if ops & {"dot", "convolution", "matmul-call"}:
        return MATMUL
    if ops & {"dynamic-slice", "dynamic-update-slice"}:
        return DYNAMIC_SLICE
    if op == "fusion":
        fusion_kind = re.search(r"kind=(k\w+)", line)
        return {"kLoop": LOOP_FUSION, "kInput": REDUCTION_FUSION, "kCustom": LIBRARY}.get(
            fusion_kind.group(1) if fusion_kind else "", "other fusions")
    if op in ("copy", "transpose", "copy-start", "copy-done"):
        return COPY
    if op in ("while", "conditional", "call"):
        return CONTROL
    return op


def format_kinds(rows) -> str:
    """The by-kind table below the model parts."""
    lines = ["op time per step by kind of op (MB: each run's operands + result; GB/s = MB / ms):",
             f"  {'ms':>8}  {'runs':>6}  {'MB':>8}  {'GB/s':>6}  kind"]
    for kind, n, ms, mb in rows:
        moved = f"{mb:8.1f}  {mb / ms:6.1f}" if mb is not None and ms > 0 else f"{'-':>8}  {'-':>6}"
        lines.append(f"  {ms:8.1f}  {n:6.0f}  {moved}  {kind}")
    return "\n".join(lines)


def format_parts(rows: list[tuple[str, float]], top: int = 25) -> str:
    """The table the trainer logs and the bench prints."""
    total = sum(ms for _, ms in rows) or 1.0
    lines = [f"op time per step by model part ({total:.0f} ms in all; ops that overlap each count):"]
    lines += [f"  {ms:8.1f} ms  {ms / total:5.1%}  {part}" for part, ms in rows[:top]]
    if len(rows) > top:
        lines.append(f"  {sum(ms for _, ms in rows[top:]):8.1f} ms  in {len(rows) - top} more parts")
    if any(part == UNMATCHED_DEVICE for part, _ in rows) and NO_COMMAND_BUFFERS not in os.environ.get("XLA_FLAGS", ""):
        # Seen on an H100 (jax 0.11.2): 0.3 ms of a 262 ms step's kernels matched; the rest ran
        # in CUDA graphs. Without graphs each kernel is launched alone, so time steps without it.
        lines.append(f"  (a GPU runs most ops inside CUDA graphs, whose kernels the trace does not name: "
                     f"for a complete table, profile with XLA_FLAGS={NO_COMMAND_BUFFERS})")
    return "\n".join(lines)


class StepTrace:
    """Traces steps ``[start_step, start_step + steps)`` of a training run (1-based step numbers,
    as logged) into ``out_dir`` and returns the table when the last one has finished."""

    def __init__(self, out_dir: str, start_step: int, steps: int):
        self.out_dir, self.first, self.steps = out_dir, max(1, start_step), steps
        self.active = False

    def before(self, step: int, pending: Any = None) -> None:
        """Call before dispatching step ``step``; ``pending`` (the outputs of steps still
        running: the loop does not wait for its steps) are waited for first, so that the
        trace holds the traced steps' ops and no earlier step's."""
        if self.steps > 0 and step == self.first and not self.active:
            jax.block_until_ready(pending)
            os.makedirs(self.out_dir, exist_ok=True)
            # No Python tracer: starting it sets a profile hook in every Python thread, and it
            # crashed the process on one thread's state, most likely a thread exiting meanwhile
            # (the trainer has several: async checkpointing, TensorBoard, tqdm): a segfault in
            # XLA's PythonHookContext::SetProfilerInAllThreads, in 4 of 44 runs of
            # tests/test_profile.py's trainer test (none in 30 after). The tables read XLA's
            # op events only.
            options = jax.profiler.ProfileOptions()
            options.python_tracer_level = 0
            jax.profiler.start_trace(self.out_dir, create_perfetto_trace=True, profiler_options=options)
            self.active, self.started = True, time.perf_counter()

    def after(self, step: int, hlo_texts: Callable[[], list[str]], outputs: Any = None) -> str | None:
        """Call after dispatching step ``step``; ``outputs`` (its results) are waited for before
        the trace stops. ``hlo_texts()`` gives the HLO of the step's executables (called only
        at the end of the window). Returns the table after the last traced step, else None."""
        if not self.active or step < self.first + self.steps - 1:
            return None
        jax.block_until_ready(outputs)  # the loop does not wait for its steps
        wall_ms = (time.perf_counter() - self.started) * 1e3
        jax.profiler.stop_trace()
        self.active = False
        texts = hlo_texts()
        times = _step_op_times(self.out_dir, texts)  # the trace is read once for both lists
        # The table averages the traced steps. On a shared machine one slow step can inflate
        # it (stop 25: steps of 399, 802 and 294 ms gave 553 ms of op time a step, against 336
        # for three quiet ones), so the window's own step time goes beside it, to be compared
        # with the run's.
        window = (f"steps {self.first}-{step}: {wall_ms:.0f} ms of wall time while traced, "
                  f"{wall_ms / self.steps:.0f} ms a step")
        table = (window + "\n" + format_parts(_parts(*times, self.steps)) + "\n"
                 + format_kinds(_kinds(*times, texts, self.steps)) + "\n" + _top(*times, texts, self.steps))
        with open(os.path.join(self.out_dir, "op_time_by_part.txt"), "w") as f:
            f.write(table + "\n")
        return f"profile of steps {self.first}-{step} in {self.out_dir}\n{table}"

    def close(self) -> None:
        if self.active:  # the run ended inside the window
            jax.profiler.stop_trace()
            self.active = False
