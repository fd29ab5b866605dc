"""Config sections shared by every experiment's `get_config()` (configs/*.py), each field commented.

Convention for configs/<family>.py (tests/configs_test.py and tests/pod_configs_test.py discover
every file in configs/ and hold each one to it; nothing is skipped silently):

  get_config(variant: str = "") -> ml_collections.ConfigDict
      "" is the documented default run. A training family also has:
        "test"                       tiny and fast: its trainer runs one step of it in a test;
        "pod_v4_32", "pod_v5e_256"   TPU pod layouts, added in one line with
                                     `pods.apply_pod(config, variant)` (rlhf_jax.config.pods).

  TRAINER = "package.module:function"
      The training family's run function, `function(config, workdir) -> summary dict`, e.g.
      "rlhf_jax.algorithms.sft:train_sft". Its module also defines
      `validate_and_derive(config, num_devices=None, num_processes=None)`, which checks the mesh
      and batch arithmetic for any topology without touching devices (pod configs are validated
      this way). Configs that do not train (e.g. a serving config) set `TRAINER = None`.

  VARIANTS = ("", "test", *pods.POD_VARIANTS)
      Every variant get_config accepts (optional for configs that are not training families).

  REQUIRES = {"policy": "sft"}   (optional)
      Config fields that take an upstream stage's artifact id, and the family that produces it.
      The configs test runs the upstream family's "test" variant first, in a sibling directory
      (same `<workdir>/../artifacts` registry), and puts `summary["artifact_id"]` in the field.

The "test" variant runs in seconds. Where a config has `train.total_steps` (in any section) the
configs test sets it to 1 and expects `<workdir>/metrics.jsonl` to hold step 1 with finite
"loss*" metrics; families without training steps (best-of-N) run their "test" variant as is.
"""
from rlhf_jax.config.sections import (checkpoint_section, lab_section, load_sibling, mesh_section, model_section,
                                      model_config_from, tokenizer_section)
