"""Process start-up shared by every entry point: logging, multi-host initialisation, topology."""
from __future__ import annotations

import logging
import os
from typing import Any

import jax

logger = logging.getLogger(__name__)


def maybe_initialize_distributed() -> bool:
  """Calls `jax.distributed.initialize` when launched as one of several processes.

  Multi-process runs are recognised by `JAX_COORDINATOR_ADDRESS` (with `JAX_NUM_PROCESSES` and
  `JAX_PROCESS_ID`), or on Cloud TPU VMs / SLURM by JAX's own cluster detection when
  `RLHF_JAX_DISTRIBUTED=1`. Single-process runs do nothing.
  """
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    missing = [k for k in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if not os.environ.get(k)]
    if missing:
      raise ValueError(f"JAX_COORDINATOR_ADDRESS is set, so this is one process of several, but "
                       f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set")
    try:
      num_processes, process_id = int(os.environ["JAX_NUM_PROCESSES"]), int(os.environ["JAX_PROCESS_ID"])
    except ValueError:
      raise ValueError(f"JAX_NUM_PROCESSES ({os.environ['JAX_NUM_PROCESSES']!r}) and JAX_PROCESS_ID "
                       f"({os.environ['JAX_PROCESS_ID']!r}) must be integers") from None
    if not 0 <= process_id < num_processes:
      raise ValueError(f"JAX_PROCESS_ID ({process_id}) must be in [0, JAX_NUM_PROCESSES={num_processes})")
    jax.distributed.initialize(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                               num_processes=num_processes, process_id=process_id)
    return True
  if os.environ.get("RLHF_JAX_DISTRIBUTED") == "1":
    jax.distributed.initialize()  # auto-detects TPU pods and SLURM clusters
    return True
  return False


def start(config: Any = None) -> None:
  """Start-up of an entry point: compile cache, distributed init, topology in the log.

  Environment: RLHF_JAX_COMPILATION_CACHE (persistent XLA cache directory, "" = off),
  RLHF_JAX_COMPILATION_CACHE_MIN_SECS (cache only compilations slower than this; default 1),
  RLHF_JAX_VERBOSE_LIBRARIES=1 (keep the INFO logs of absl-logging libraries such as Orbax),
  and the multi-process variables of `maybe_initialize_distributed`.
  """
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  # Orbax (through absl logging) narrates every checkpoint phase at INFO, which buries the progress
  # bars and metrics; its warnings and errors still show. RLHF_JAX_VERBOSE_LIBRARIES=1 keeps it all.
  if os.environ.get("RLHF_JAX_VERBOSE_LIBRARIES") != "1":
    logging.getLogger("absl").setLevel(logging.WARNING)
  cache = os.environ.get("RLHF_JAX_COMPILATION_CACHE", os.path.expanduser("~/.cache/rlhf_jax/xla"))
  if cache:
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ.get("RLHF_JAX_COMPILATION_CACHE_MIN_SECS", "1.0")))
  maybe_initialize_distributed()
  logger.info("process %d/%d, %d local / %d global devices (%s)", jax.process_index(), jax.process_count(),
              jax.local_device_count(), jax.device_count(), jax.devices()[0].device_kind)
  del config
