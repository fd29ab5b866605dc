"""Data layer: raw files -> validated examples -> token ids -> TFDS array_record -> grain batches.

Submodules (import them directly for the rest of their API):
  tokenizer       SentencePiece wrapper (pad=0, unk=1, bos=2, eos=3).
  schemas         PreferenceExample, SFTExample, PromptExample, Comparison, Message.
  records         JSON / JSONL (+gzip) reading with line numbers; atomic JSONL writing.
  validation      DataError, ValidationPolicy, IngestionReport.
  ingest          preference / SFT / prompt ingestion (plain and TRL conversational layouts).
  hh_rlhf         Anthropic HH-RLHF transcripts.
  multi_annotator multi-annotator comparisons and their aggregation (majority or Dawid-Skene).
  annotators      agreement statistics (Cohen / Fleiss kappa) and Dawid-Skene EM on label arrays.
  dedup           exact / normalised dedup and prompt-disjoint splits.
  manifest        dataset manifests, ids and verification.
  prepare         ingest -> dedup -> split -> files + manifest in one call.
  chat            chat template: conversation -> token ids + response mask.
  tokenization    examples -> token-id records (prefix invariant, loss masks, over-long policy).
  tfds_builders   TFDS array_record datasets written and read without TensorFlow.
  batching        bucketed padding: PromptBatch, SequenceBatch, PreferenceBatch.
  packing         first-fit packing of SFT examples into rows with segment ids.
  loader          deterministic, per-process sharded, resumable grain loader.
  pipeline        one call from a raw file to a loader; TFDS datasets with verified manifests.
"""
from rlhf_jax.data.batching import PreferenceBatch, PromptBatch, SequenceBatch, bucket_lengths
from rlhf_jax.data.batching import collate_preferences, collate_prompts, collate_sft
from rlhf_jax.data.chat import ChatTemplate, ChatTokens, render, render_prompt, render_text
from rlhf_jax.data.dedup import check_prompt_disjoint, dedup_pairs, dedup_prompts, split_by_prompt
from rlhf_jax.data.hh_rlhf import read_hh_rlhf
from rlhf_jax.data.ingest import read_preferences, read_prompts, read_sft
from rlhf_jax.data.loader import Loader, make_loader
from rlhf_jax.data.manifest import ManifestError, build_manifest, verify_manifest, write_manifest
from rlhf_jax.data.multi_annotator import aggregate_comparisons, read_comparisons
from rlhf_jax.data.packing import PackedRows, collate_packed_sft, pack_sequences
from rlhf_jax.data.pipeline import build_tfds_from_prepared, load_preference_batches
from rlhf_jax.data.pipeline import load_prompt_batches, load_sft_batches, open_tfds_dataset
from rlhf_jax.data.prepare import prepare_dataset
from rlhf_jax.data.records import iter_records, write_jsonl
from rlhf_jax.data.schemas import SCHEMA_VERSION, Comparison, Message, PreferenceExample
from rlhf_jax.data.schemas import PromptExample, SchemaError, SFTExample
from rlhf_jax.data.tfds_builders import build_dataset, open_split
from rlhf_jax.data.tokenization import tokenize_preferences, tokenize_prompts, tokenize_sft
from rlhf_jax.data.tokenizer import Tokenizer, TokenizerError
from rlhf_jax.data.validation import DataError, IngestionReport, ValidationPolicy
