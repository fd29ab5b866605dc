"""Reusable ml_collections sections. Every field carries a comment with its meaning and units.

configs/<family>.py builds its `get_config()` from these plus its own algorithm section, so the
same field means the same thing in every experiment.
"""
from __future__ import annotations

import ml_collections

from rlhf_jax.models.config import PRESETS, ModelConfig


def model_section(preset: str = "tiny", **overrides) -> ml_collections.ConfigDict:
  """The decoder's hyper-parameters, starting from a named preset (see rlhf_jax.models.PRESETS)."""
  cfg = ml_collections.ConfigDict(PRESETS[preset].to_dict())
  cfg.preset = preset  # the preset these values started from (informational)
  # vocab_size: -1 takes the tokenizer's vocabulary size (the lab trains its own small tokenizer).
  for k, v in overrides.items():
    cfg[k] = v
  return cfg


def model_config_from(section: ml_collections.ConfigDict, vocab_size: int | None = None) -> ModelConfig:
  """ModelConfig from a model section; vocab_size=-1 in the section is filled from the tokenizer."""
  d = {k: v for k, v in section.to_dict().items() if k != "preset"}
  if d.get("vocab_size", 0) == -1:
    if vocab_size is None:
      raise ValueError("model.vocab_size is -1 (take it from the tokenizer) but no tokenizer size was given")
    d["vocab_size"] = vocab_size
  elif vocab_size is not None and d["vocab_size"] < vocab_size:
    raise ValueError(f"model.vocab_size ({d['vocab_size']}) is smaller than the tokenizer's vocabulary "
                     f"({vocab_size})")
  return ModelConfig.from_dict(d).validate()


def mesh_section() -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict()
  cfg.data = -1  # pure data-parallel devices (-1: all devices not used by the other axes)
  cfg.fsdp = 1  # devices that shard parameters and optimiser state (ZeRO-3 style data parallelism)
  cfg.tensor = 1  # tensor (model) parallel devices inside attention heads and MLPs
  # Logical-axis rules as [name, mesh_axes] pairs; None uses rlhf_jax.sharding.DEFAULT_RULES.
  cfg.rules = ml_collections.config_dict.placeholder(tuple)
  return cfg


def tokenizer_section() -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict()
  cfg.path = ""  # a SentencePiece .model file; "" trains one on the run's own corpus (lab default)
  cfg.vocab_size = 1024  # pieces when training on the fly
  cfg.model_type = "bpe"  # "bpe" | "unigram" when training on the fly
  return cfg


def checkpoint_section() -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict()
  cfg.every = 100  # save every this many optimiser steps (the last step is always saved)
  cfg.max_to_keep = 2  # most recent checkpoints kept
  cfg.keep_best_metric = ""  # also keep the best checkpoint by this metric ("" = off), e.g. "eval/loss"
  cfg.best_mode = "min"  # "min" | "max" for keep_best_metric
  cfg.async_save = True  # write checkpoints in the background (Orbax asynchronous checkpointing)
  return cfg


def lab_section(scale: str = "default") -> ml_collections.ConfigDict:
  """Sizes of the built-in lab corpora (rlhf_jax.lab.LabConfig); "test" is tiny."""
  cfg = ml_collections.ConfigDict()
  cfg.seed = 0  # seed of every lab corpus (independent of the training seed)
  big = scale == "default"
  cfg.num_sft_train = 8_000 if big else 64  # review demonstrations
  cfg.num_sft_eval = 256 if big else 16
  cfg.num_arithmetic_sft_train = 0 if big else 0  # arithmetic demonstrations mixed into SFT
  cfg.num_arithmetic_sft_eval = 0
  cfg.num_prompts_train = 2_000 if big else 32  # prompts for RL / best-of-N
  cfg.num_prompts_eval = 256 if big else 16
  cfg.num_preferences_train = 4_000 if big else 64  # labelled pairs
  cfg.num_preferences_eval = 512 if big else 16
  return cfg


def load_sibling(this_file: str, name: str):
  """Imports `<dir of this_file>/<name>.py` (a config module next to the caller) by path, so config
  files can compose each other whatever the working directory or sys.path."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import pathlib  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(this_file).parent / f"{name}.py"
  spec = importlib.util.spec_from_file_location(f"rlhf_jax_configs_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
