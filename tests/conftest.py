"""Shared test set-up: 8 fake CPU devices, a persistent compile cache, strict broadcasting.

The device count must be fixed before the first JAX operation, so it is set here at import.
Single-device tests simply run on device 0 of the 8.
"""
import os
import pathlib

import jax

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_rank_promotion", "raise")  # silent mask broadcasting is the classic RLHF bug
_CACHE = pathlib.Path(os.environ.get("RLHF_JAX_TEST_CACHE", pathlib.Path(__file__).parent.parent / ".jax_cache"))
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

import pytest  # noqa: E402

TESTDATA = pathlib.Path(__file__).parent / "testdata"
SHARED_DATA = pathlib.Path(__file__).resolve().parent.parent.parent / "shared" / "data"


@pytest.fixture(scope="session")
def testdata_dir() -> pathlib.Path:
    return TESTDATA


@pytest.fixture(scope="session")
def shared_data_dir() -> pathlib.Path:
    """../shared/data next to the checkout; tests that need it skip visibly where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA} (../shared/data is optional)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def test_lm():
  """(CausalLM, params) of the `test` preset, initialised once per test process (jitted init is
  several times faster than eager Flax init)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from rlhf_jax import models  # pylint: disable=g-import-not-at-top
  lm = models.CausalLM(models.get_model_config("test"))
  params = jax.jit(lambda k: nn.unbox(models.init_params(lm, k)))(jax.random.key(0))
  return lm, params
