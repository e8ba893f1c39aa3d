"""``python -m audiochat_jax.distributed [--auto] MODULE [ARGS...]``: join the JAX cluster, then
run ``python -m MODULE ARGS...`` in this process (e.g. ``audiochat_jax.train --config ...``).

Every process of a multi-host job runs the same command. How the processes find each other:

* explicit (multi-node GPU, tests): ``JAX_COORDINATOR_ADDRESS=host:port``, ``JAX_NUM_PROCESSES``,
  ``JAX_PROCESS_ID`` in the environment (launch/gpu_slurm.sh sets them from SLURM);
* ``--auto``: JAX's own cluster detection (Cloud TPU pod metadata, SLURM, Open MPI);
* neither: a single process (``jax.distributed`` is not initialised).

Multi-process CPU runs use JAX's default CPU collectives (gloo,
``jax_cpu_collectives_implementation``), so the same code path is testable on one machine.
"""
from __future__ import annotations

import os
import runpy
import sys


ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def initialize(auto: bool = False) -> bool:
    """Calls ``jax.distributed.initialize`` as described above; returns whether it did."""
    import jax
    present = [k for k in ENV if os.environ.get(k)]
    if present and len(present) != len(ENV):
        missing = sorted(set(ENV) - set(present))
        raise ValueError(f"{', '.join(present)} set but {', '.join(missing)} not: set all of {ENV} "
                         "(or none, with --auto, to let JAX detect the cluster)")
    if present:
        jax.distributed.initialize(os.environ["JAX_COORDINATOR_ADDRESS"],
                                   num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                                   process_id=int(os.environ["JAX_PROCESS_ID"]))
        return True
    if auto:
        jax.distributed.initialize()
        return True
    return False


def main(argv: list[str]) -> None:
    auto = bool(argv) and argv[0] == "--auto"
    argv = argv[1:] if auto else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if argv else 2)
    try:
        initialize(auto)
    except ValueError as e:
        sys.exit(f"error: {e}")
    module, sys.argv = argv[0], list(argv)
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
