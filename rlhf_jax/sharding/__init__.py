"""Meshes, logical-axis rules and sharding helpers. The only module that builds PartitionSpecs."""
from rlhf_jax.sharding.mesh import MESH_AXES, describe_topology, make_mesh, resolve_mesh_shape, single_device_mesh
from rlhf_jax.sharding.partition import (batch_sharding, batch_spec, data_parallel_size, init_sharded,
                                         logical_shardings, opt_state_shardings, put_batch, replicated)
from rlhf_jax.sharding.rules import DEFAULT_RULES, LogicalRules, rules_from_config
