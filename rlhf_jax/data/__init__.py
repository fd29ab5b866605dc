"""Data layer: tokenizer, record schemas, ingestion, validation, dedup, manifests, chat template.

Submodules (import them directly for the rest of their API):
  tokenizer       SentencePiece wrapper (pad=0, unk=1, bos=2, eos=3).
  schemas         PreferenceExample, SFTExample, PromptExample, Comparison, Message.
  records         JSON / JSONL (+gzip) reading with line numbers; atomic JSONL writing.
  validation      DataError, ValidationPolicy, IngestionReport.
  ingest          preference / SFT / prompt ingestion (plain and TRL conversational layouts).
  hh_rlhf         Anthropic HH-RLHF transcripts.
  multi_annotator multi-annotator comparisons and their aggregation.
  dedup           exact / normalised dedup and prompt-disjoint splits.
  manifest        dataset manifests, ids and verification.
  prepare         ingest -> dedup -> split -> files + manifest in one call.
  chat            chat template: conversation -> token ids + response mask.
"""
from rlhf_jax.data.chat import ChatTemplate, ChatTokens, render, render_prompt, render_text
from rlhf_jax.data.dedup import check_prompt_disjoint, dedup_pairs, dedup_prompts, split_by_prompt
from rlhf_jax.data.hh_rlhf import read_hh_rlhf
from rlhf_jax.data.ingest import read_preferences, read_prompts, read_sft
from rlhf_jax.data.manifest import ManifestError, build_manifest, verify_manifest, write_manifest
from rlhf_jax.data.multi_annotator import aggregate_comparisons, read_comparisons
from rlhf_jax.data.prepare import prepare_dataset
from rlhf_jax.data.records import iter_records, write_jsonl
from rlhf_jax.data.schemas import SCHEMA_VERSION, Comparison, Message, PreferenceExample
from rlhf_jax.data.schemas import PromptExample, SchemaError, SFTExample
from rlhf_jax.data.tokenizer import Tokenizer, TokenizerError
from rlhf_jax.data.validation import DataError, IngestionReport, ValidationPolicy
