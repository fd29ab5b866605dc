"""Config sections shared by every experiment's `get_config()` (configs/*.py), each field commented."""
from rlhf_jax.config.sections import (checkpoint_section, lab_section, load_sibling, mesh_section, model_section,
                                      model_config_from, tokenizer_section)
