"""A toy training run on the shared training core, used by the exact-resume and host-loop tests.

Importable (the model, data iterator, loss and `build`), and runnable as a script:

  python tests/testdata/toy_train.py --workdir /tmp/run --total_steps 12 --checkpoint_every 3

A per-token classifier (a two-layer MLP over [B, L, D] features with logically partitioned
parameters) trained with a token-mean cross-entropy over ragged masks, AdamW, gradient
accumulation, a deterministic synthetic data iterator with `get_state`/`set_state`, Orbax
checkpoints and the shared host loop. At the end it writes `final_params.npz` to the workdir.

Test hooks: `--step_sleep` slows every step so that a kill lands mid-run; `--slow_save_step K`
makes the commit (the rename of the tmp directory) of the step-K checkpoint hang, after writing
`<workdir>/in_save_K`, so that a kill lands mid-save.
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import pathlib
import sys
import time

import numpy as np

FEATURES = 8  # D: input width
HIDDEN = 16  # F: hidden width
CLASSES = 8  # V: output classes per token
LENGTH = 4  # L: tokens per example


def _linen():
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  return nn


def make_model(hidden: int = HIDDEN, classes: int = CLASSES):
  """A Linen MLP applied to every token; parameters carry logical axis names."""
  nn = _linen()
  lp = nn.with_logical_partitioning

  class ToyMLP(nn.Module):
    """Dense -> LayerNorm -> gelu -> Dense over the last axis."""

    @nn.compact
    def __call__(self, x_BxLxD):
      h = nn.Dense(hidden, kernel_init=lp(nn.initializers.lecun_normal(), ("embed", "mlp")),
                   bias_init=lp(nn.initializers.normal(0.1), ("mlp",)), name="in_proj")(x_BxLxD)
      h = nn.LayerNorm(scale_init=lp(nn.initializers.ones, ("norm",)),
                       bias_init=lp(nn.initializers.zeros, ("norm",)), name="norm")(h)
      h = nn.gelu(h)
      return nn.Dense(classes, kernel_init=lp(nn.initializers.lecun_normal(), ("mlp", "embed")),
                      bias_init=lp(nn.initializers.zeros, ("norm",)), name="out_proj")(h)

  return ToyMLP()


class ToyData:
  """Deterministic synthetic batches; batch i depends only on (seed, i). Resumable."""

  def __init__(self, seed: int, batch_size: int, length: int = LENGTH, features: int = FEATURES,
               classes: int = CLASSES):
    self.seed, self.batch_size, self.length = seed, batch_size, length
    self.features, self.classes, self.index = features, classes, 0

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self.seed, self.index])
    self.index += 1
    b, l = self.batch_size, self.length
    lengths_B = rng.integers(1, l + 1, size=b)
    return {
        "x_BxLxD": rng.normal(size=(b, l, self.features)).astype(np.float32),
        "y_BxL": rng.integers(0, self.classes, size=(b, l)).astype(np.int32),
        "mask_BxL": (np.arange(l)[None, :] < lengths_B[:, None]).astype(np.float32),
    }

  def get_state(self) -> dict[str, int]:
    return {"index": self.index}

  def set_state(self, state: dict[str, int]) -> None:
    self.index = int(state["index"])


def token_loss(params, batch, key=None, *, model):
  """Token-mean cross-entropy in the accumulation protocol: (loss_sum, (token_count, metrics))."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  del key
  logits_BxLxV = model.apply({"params": params}, batch["x_BxLxD"]).astype(jnp.float32)
  logp_BxLxV = jax.nn.log_softmax(logits_BxLxV, axis=-1)
  nll_BxL = -jnp.take_along_axis(logp_BxLxV, batch["y_BxL"][..., None], axis=-1)[..., 0]
  mask_BxL = batch["mask_BxL"]
  loss_sum = jnp.sum(nll_BxL * mask_BxL)
  count = jnp.sum(mask_BxL)
  accuracy = jnp.sum((jnp.argmax(logits_BxLxV, -1) == batch["y_BxL"]) * mask_BxL) / jnp.maximum(
      count, 1.0)
  return loss_sum, (count, {"loss/nll": loss_sum / jnp.maximum(count, 1.0),
                            "accuracy/token": accuracy})


def toy_optimizer_config(total_steps: int):
  from rlhf_jax.algorithms import optimizer  # pylint: disable=g-import-not-at-top
  cfg = optimizer.optimizer_config_defaults()
  cfg.lr, cfg.warmup_steps, cfg.total_steps, cfg.weight_decay = 1e-2, 2, total_steps, 0.1
  cfg.grad_clip_norm = 1.0
  return cfg


def build(mesh, *, seed: int = 0, total_steps: int = 12, batch_size: int = 8,
          num_micro_batches: int = 2, opt_cfg=None):
  """State, shardings, jitted step and loss for the toy run on `mesh`."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from rlhf_jax import sharding  # pylint: disable=g-import-not-at-top
  from rlhf_jax.algorithms import optimizer, train_state  # pylint: disable=g-import-not-at-top
  model = make_model()
  tx, schedule = optimizer.make_optimizer(opt_cfg or toy_optimizer_config(total_steps))
  init_fn = lambda key, x: model.init(key, x)["params"]  # pylint: disable=unnecessary-lambda-assignment
  init_args = (jax.random.key(seed), jnp.zeros((1, LENGTH, FEATURES), jnp.float32))
  state, state_shardings = train_state.create_train_state(init_fn, tx, mesh, sharding.DEFAULT_RULES,
                                                          *init_args)
  loss_fn = functools.partial(token_loss, model=model)
  step = train_state.make_train_step(loss_fn, tx, num_micro_batches=num_micro_batches,
                                     schedule_fn=schedule)
  example = next(ToyData(seed, batch_size))
  batch_shardings = train_state.batch_shardings_for(example, mesh)
  jitted = train_state.jit_train_step(step, state_shardings, batch_shardings, mesh)
  return {"state": state, "shardings": state_shardings, "step_fn": jitted, "loss_fn": loss_fn,
          "tx": tx, "model": model, "init_fn": init_fn, "init_args": init_args}


def _patch_slow_commit(workdir: pathlib.Path, step: int) -> None:
  """Makes Orbax's commit (tmp-dir rename) of checkpoint `step` hang: a kill then lands mid-save."""
  from orbax.checkpoint._src.path import atomicity  # pylint: disable=g-import-not-at-top
  original = atomicity.AtomicRenameTemporaryPath.finalize

  async def finalize(self, *args, **kwargs):
    if self.get_final().name == str(step):
      (workdir / f"in_save_{step}").write_text("waiting to commit\n")
      time.sleep(600)
    return await original(self, *args, **kwargs)

  atomicity.AtomicRenameTemporaryPath.finalize = finalize


def _sleeping(step_fn, seconds: float):
  """Wraps a step function so that each call first sleeps (kills then land mid-run)."""
  def step(state, batch, key):
    time.sleep(seconds)
    return step_fn(state, batch, key)
  return step


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--total_steps", type=int, default=12)
  parser.add_argument("--checkpoint_every", type=int, default=3)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--micro_batches", type=int, default=2)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--step_sleep", type=float, default=0.0)
  parser.add_argument("--slow_save_step", type=int, default=0)
  args = parser.parse_args(argv)

  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_num_cpu_devices", 1)
  cache = os.environ.get("RLHF_JAX_TEST_CACHE")
  if cache:
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                      format="%(levelname)s %(name)s: %(message)s")
  for noisy in ("absl", "jax", "orbax"):
    logging.getLogger(noisy).setLevel(logging.WARNING)

  from rlhf_jax import sharding  # pylint: disable=g-import-not-at-top
  from rlhf_jax.algorithms import host_loop, metrics  # pylint: disable=g-import-not-at-top
  from rlhf_jax.checkpointing import CheckpointManager  # pylint: disable=g-import-not-at-top

  workdir = pathlib.Path(args.workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  if args.slow_save_step:
    _patch_slow_commit(workdir, args.slow_save_step)
  mesh = sharding.single_device_mesh()
  parts = build(mesh, seed=args.seed, total_steps=args.total_steps, batch_size=args.batch_size,
                num_micro_batches=args.micro_batches)
  step_fn = parts["step_fn"]
  if args.step_sleep:
    step_fn = _sleeping(step_fn, args.step_sleep)

  config = {"seed": args.seed, "total_steps": args.total_steps, "batch_size": args.batch_size,
            "micro_batches": args.micro_batches, "checkpoint_every": args.checkpoint_every}
  writer = metrics.make_writers(workdir, tensorboard=False, log_every=10**9)
  with CheckpointManager(workdir / "checkpoints", max_to_keep=2, name="toy") as manager:
    result = host_loop.run_loop(
        state=parts["state"], step_fn=step_fn, batches=ToyData(args.seed, args.batch_size),
        total_steps=args.total_steps, base_key=jax.random.key(args.seed + 1), writer=writer,
        checkpoint_manager=manager, checkpoint_every=args.checkpoint_every, mesh=mesh,
        config=config, metadata={"seed": args.seed, "dataset_ids": ["toy-synthetic-v1"]},
        show_progress=False)
  writer.close()
  flat = jax.tree_util.tree_flatten_with_path(jax.device_get(result.state.params))[0]
  np.savez(workdir / "final_params.npz",
           **{jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat})
  logging.info("finished at step %d (started at %d)", int(result.state.step), result.start_step)


if __name__ == "__main__":
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
  main()
