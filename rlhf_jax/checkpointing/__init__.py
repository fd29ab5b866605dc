"""Checkpointing: Orbax manager with exact resume, and artifact identity (hashes, metadata)."""
from rlhf_jax.checkpointing.artifacts import (artifact_id, build_metadata, canonical_json, code_version,
                                              content_hash, to_jsonable)
from rlhf_jax.checkpointing.manager import CheckpointExtras, CheckpointManager

__all__ = ["CheckpointExtras", "CheckpointManager", "artifact_id", "build_metadata", "canonical_json",
           "code_version", "content_hash", "to_jsonable"]
