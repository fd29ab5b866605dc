"""The lab's corpora as prepared datasets, through the same path as real data.

SFT = Supervised Fine-Tuning, RL = Reinforcement Learning, EM = Expectation-Maximisation,
TFDS = TensorFlow Datasets (array_record, read without TensorFlow).

`prepare_lab_datasets` writes each lab corpus as JSONL and runs it through
`rlhf_jax.data.prepare.prepare_dataset` (the readers, validation policy, dedup stage and manifests
that real files get), so every lab dataset has a verified manifest and a content-derived id, and
trainers read it with the ordinary loaders:

  paths = prepare_lab_datasets(LabConfig(), data_dir / "lab")
  batches = load_sft_batches(paths["mixed/sft"], tokenizer, batch_size=32, seed=0,
                             data_dir=data_dir)        # tokenised into data_dir/tfds on first use
  it = iter(batches); batch = next(it)

or, in one call, `lab_sft_loader(LabConfig(), data_dir, tokenizer, batch_size=32, seed=0)` (also
`lab_preference_loader`, `lab_prompt_loader`). Corpora (`CORPORA`):

  reviews/sft                      demonstrations (base-distribution reviews)
  reviews/prompts                  RL / best-of-N prompts (drawn with replacement, as the lab does)
  reviews/preferences              one row per annotation: the panel's labels as the lab emits them
  reviews/preferences_gold         the same pairs labelled by the noise-free gold annotator
  reviews/preferences_majority     the panel's labels as `Comparison` rows (multi-annotator data),
  reviews/preferences_dawid_skene    aggregated by the "comparisons" reader (majority vote or
                                     Dawid-Skene EM); `confidence` = P(chosen label)
  arithmetic/sft, arithmetic/prompts
  mixed/sft                        reviews then arithmetic demonstrations (the SFT trainer's mix;
                                   arithmetic is left out of a split whose size is 0)

Splits. The lab splits prompts into train / eval itself (`corpora.prompt_split`, disjoint across
corpora), while `prepare_dataset` assigns splits by its own prompt hash. To keep the lab's
split, each split is prepared as its own dataset (prepare's single "train" split) in
`<target>/<split>/` from the JSONL sources in `<target>/raw/`, and the corpus manifest `<target>/manifest.json` (same format, built and
verified by `rlhf_jax.data.manifest`) lists those files under the lab's split names. Gold and
comparison corpora have both splits; the lab's `build_corpora` has gold labels for eval only.

Normalisation: the records read back equal the lab's records (`corpora.review_sft`, ...,
`annotators.comparison_records`) except that
  * gold rewards in preference metadata (gold_chosen, gold_rejected) are rounded to 9 decimals:
    `gold_reward` sums its components with BLAS, whose summation order depends on the CPU, and
    the ulp-level differences would otherwise change file hashes and ids across machines;
  * the validation policy applies (default: drop empty texts and pairs with identical
    responses), counted in the manifest's `filters`;
  * dedup is off by default (`dedup_mode=None`): lab corpora are independent draws, so repeats
    are part of the distribution (at default sizes 2,000 review prompts hold 226 distinct ones and
    20,000 arithmetic demonstrations 8,556 distinct ones); pass "normalized" to dedup like real
    data;
  * aggregated corpora hold one record per pair (id = the item id "lab-reviews-<split>-<item>",
    as in `algorithms.reward_model`), source "lab/reviews", metadata {votes[, posterior]}.

Caching: a target is `<out_dir>/lab_<corpus>_<hash>`, the hash covering the LabConfig, the build
options and the lab's source code (so editing the lab never reuses stale data). A target whose
manifest verifies and records the same LabConfig and options (`params["lab"]`) is reused without
generating anything. Building is deterministic: the same config gives byte-identical files and the
same dataset ids in any process. Several processes must not build one target at once: on a
multi-host run, build on process 0 first, then load everywhere.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import re
from typing import Any, Callable, Literal, Mapping, Sequence

from rlhf_jax.data import ingest, loader, manifest, pipeline, prepare, records
from rlhf_jax.data.tokenizer import Tokenizer
from rlhf_jax.data.validation import IngestionReport, ValidationPolicy
from rlhf_jax.lab import annotators
from rlhf_jax.lab import corpora as corpora_lib

LAYOUT_VERSION = 1  # bump when this module changes what it writes
MANIFEST_FILE = "manifest.json"
GOLD_DECIMALS = 9  # rounding of gold rewards in metadata (see the module docstring)
_LAB_DIR = pathlib.Path(__file__).parent


@dataclasses.dataclass(frozen=True)
class Corpus:
  """How one lab corpus is prepared: the reader, its options and the record parts it joins."""

  reader: str  # a `prepare.READERS` name
  parts: tuple[str, ...]  # `LabRecords` parts, one JSONL source file each
  reader_options: Mapping[str, Any] | None = None

  @property
  def kind(self) -> str:
    """Loader kind of its records: "sft", "prompt" or "preference"."""
    return pipeline.READER_KINDS[self.reader]


def _comparisons(method: str) -> Corpus:
  return Corpus("comparisons", ("reviews/comparisons",),
                {"method": method, "source": corpora_lib.REVIEW_SOURCE})


CORPORA: Mapping[str, Corpus] = {
    "reviews/sft": Corpus("sft", ("reviews/sft",)),
    "reviews/prompts": Corpus("prompts", ("reviews/prompts",)),
    "reviews/preferences": Corpus("preferences", ("reviews/preferences",)),
    "reviews/preferences_gold": Corpus("preferences", ("reviews/preferences_gold",)),
    "reviews/preferences_majority": _comparisons("majority"),
    "reviews/preferences_dawid_skene": _comparisons("dawid_skene"),
    "arithmetic/sft": Corpus("sft", ("arithmetic/sft",)),
    "arithmetic/prompts": Corpus("prompts", ("arithmetic/prompts",)),
    "mixed/sft": Corpus("sft", ("reviews/sft", "arithmetic/sft")),
}


def _rounded_gold(record: dict[str, Any]) -> dict[str, Any]:
  meta = dict(record["metadata"])
  for key in ("gold_chosen", "gold_rejected"):
    if key in meta:
      meta[key] = round(meta[key], GOLD_DECIMALS)
  return {**record, "metadata": meta}


class LabRecords:
  """The lab's records of each part and split, each generated once (pairs and labels too)."""

  # part -> the LabConfig size field stem of its splits ("sft" -> num_sft_train, num_sft_eval).
  SIZES = {"reviews/sft": "sft", "reviews/prompts": "prompts",
           "reviews/preferences": "preferences", "reviews/preferences_gold": "preferences",
           "reviews/comparisons": "preferences", "arithmetic/sft": "arithmetic_sft",
           "arithmetic/prompts": "arithmetic_prompts"}

  def __init__(self, config: corpora_lib.LabConfig):
    self.config = config.validate()
    self._pairs: dict[str, tuple[list[str], list[str], list[str]]] = {}
    self._labelled: dict[tuple[str, bool], annotators.LabelledPairs] = {}
    self._parts: dict[tuple[str, str], list[dict[str, Any]]] = {}

  def size(self, part: str, split: str) -> int:
    return getattr(self.config, f"num_{self.SIZES[part]}_{split}")

  def labelled(self, split: str, gold: bool = False) -> annotators.LabelledPairs:
    """`corpora.review_preferences` of the split (panel or gold labels), computed once."""
    if split not in self._pairs:
      self._pairs[split] = corpora_lib.review_pairs(self.config, split)
    if (split, gold) not in self._labelled:
      self._labelled[split, gold] = corpora_lib.review_preferences(
          self.config, split, gold_labels=gold, pairs=self._pairs[split])
    return self._labelled[split, gold]

  def part(self, part: str, split: str) -> list[dict[str, Any]]:
    """Records of one part (a key of `SIZES`) and split, in the lab's record layout."""
    if (part, split) not in self._parts:
      self._parts[part, split] = self._make(part, split)
    return self._parts[part, split]

  def _make(self, part: str, split: str) -> list[dict[str, Any]]:
    c = self.config
    if part in ("reviews/preferences", "reviews/preferences_gold"):
      return [_rounded_gold(r) for r in self.labelled(split, part.endswith("_gold")).records]
    if part == "reviews/comparisons":
      labels = self.labelled(split).labels
      return annotators.comparison_records(*self._pairs[split], labels, c.panel,
                                           id_prefix=f"lab-reviews-{split}")
    make = {"reviews/sft": corpora_lib.review_sft, "reviews/prompts": corpora_lib.review_prompts,
            "arithmetic/sft": corpora_lib.arithmetic_sft,
            "arithmetic/prompts": corpora_lib.arithmetic_prompts}.get(part)
    if make is None:
      raise ValueError(f"unknown lab record part {part!r}; known: {sorted(self.SIZES)}")
    return make(c, split)


def _code_fingerprint() -> str:
  """sha256 of the lab's source files: a changed generator never reuses a cached target."""
  h = hashlib.sha256()
  for path in sorted(_LAB_DIR.glob("*.py")):
    h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
  return h.hexdigest()


def _jsonable(obj: Any) -> Any:
  return json.loads(json.dumps(obj, sort_keys=True, allow_nan=False))


def build_options(config: corpora_lib.LabConfig, corpus: str, *,
                  policy: ValidationPolicy = ingest.DEFAULT_POLICY,
                  dedup_mode: Literal["exact", "normalized"] | None = None) -> dict[str, Any]:
  """What a corpus is built from; recorded as `params["lab"]` of its manifest."""
  return _jsonable({"corpus": corpus, "layout_version": LAYOUT_VERSION,
                    "lab_config": dataclasses.asdict(config),
                    "policy": dataclasses.asdict(policy), "dedup_mode": dedup_mode})


def dataset_name(corpus: str) -> str:
  """The dataset name of a corpus ("reviews/sft" -> "lab_reviews_sft"), before "@" in its id."""
  return "lab_" + re.sub(r"[^a-z0-9]+", "_", corpus.lower()).strip("_")


def target_dir(out_dir: str | os.PathLike, options: Mapping[str, Any]) -> pathlib.Path:
  """`<out_dir>/<dataset name>_<hash of the options and the lab's code>`."""
  key = json.dumps({"options": options, "code": _code_fingerprint()}, sort_keys=True)
  digest = hashlib.sha256(key.encode()).hexdigest()[:10]
  return pathlib.Path(out_dir) / f"{dataset_name(options['corpus'])}_{digest}"


def _reusable(manifest_path: pathlib.Path, options: Mapping[str, Any]) -> bool:
  if not manifest_path.is_file():
    return False
  try:
    m = manifest.verify_manifest(manifest_path)
  except manifest.ManifestError as e:
    logging.warning("rebuilding %s: %s", manifest_path.parent, e)
    return False
  return m.get("params", {}).get("lab") == options


def _build(target: pathlib.Path, corpus: str, spec: Corpus, source: LabRecords,
           options: Mapping[str, Any], policy: ValidationPolicy,
           dedup_mode: Literal["exact", "normalized"] | None) -> None:
  """Writes the raw JSONL parts, prepares each split, then the corpus manifest."""
  name = dataset_name(corpus)
  outputs, counts, sources, reports, split_ids = {}, {}, [], [], {}
  for split in corpora_lib.SPLITS:
    parts = [p for p in spec.parts if source.size(p, split) > 0]
    if not parts:
      continue
    split_sources = []
    for part in parts:
      path = target / "raw" / f"{part.replace('/', '_')}_{split}.jsonl.gz"
      records.write_jsonl(path, source.part(part, split))
      split_sources.append(path)
    report = IngestionReport()
    m = prepare.prepare_dataset(
        f"{name}_{split}", split_sources, target / split, reader=spec.reader,
        reader_options=spec.reader_options, policy=policy, dedup_mode=dedup_mode,
        eval_fraction=0.0, params={"lab": dict(options), "lab_split": split}, report=report)
    outputs[split] = target / split / "train.jsonl.gz"
    counts[split] = m["splits"]["train"]["count"]
    sources += split_sources
    reports.append(report)
    split_ids[split] = m["dataset_id"]
  if not outputs:
    raise ValueError(f"lab corpus {corpus!r}: every split has size 0 in the LabConfig "
                     f"(parts {list(spec.parts)})")
  params = {"reader": spec.reader, "policy": dataclasses.asdict(policy), "dedup_mode": dedup_mode,
            "split_by": "rlhf_jax.lab.corpora.prompt_split", "lab": dict(options),
            "split_dataset_ids": split_ids}
  if spec.reader_options:
    params["reader_options"] = dict(spec.reader_options)
  m = manifest.build_manifest(name, root=target, outputs=outputs, counts=counts, sources=sources,
                              report=IngestionReport.merge(reports, source=name), params=params)
  manifest.write_manifest(target / MANIFEST_FILE, m)


def prepare_lab_datasets(lab_config: corpora_lib.LabConfig, out_dir: str | os.PathLike, *,
                         corpora: Sequence[str] = tuple(CORPORA),
                         policy: ValidationPolicy = ingest.DEFAULT_POLICY,
                         dedup_mode: Literal["exact", "normalized"] | None = None
                         ) -> dict[str, pathlib.Path]:
  """Prepares lab corpora as datasets with verified manifests; returns corpus -> manifest path.

  Args:
    lab_config: sizes, seed, panel, base distribution and gold reward of the lab.
    out_dir: folder of the targets (`<out_dir>/lab_<corpus>_<hash>/`); created.
    corpora: names from `CORPORA` (default: all).
    policy: validation policy of `prepare_dataset` (recorded; part of the target's hash).
    dedup_mode: dedup of `prepare_dataset`; None (default) keeps the lab's repeats (see the
      module docstring).

  Returns:
    {corpus: path of its manifest.json}; give it to `load_sft_batches` / `load_*_batches`.

  Raises:
    ValueError: unknown corpus, an invalid LabConfig (naming the field), or a corpus whose
      splits all have size 0.
  """
  if isinstance(corpora, str):
    raise TypeError(f"corpora must be a sequence of corpus names, got the string {corpora!r} "
                    f"(write corpora=[{corpora!r}])")
  unknown = [c for c in corpora if c not in CORPORA]
  if unknown:
    raise ValueError(f"unknown lab corpus {unknown[0]!r}; available: {sorted(CORPORA)}")
  lab_config = lab_config.validate()
  source = LabRecords(lab_config)
  out = {}
  for corpus in dict.fromkeys(corpora):
    options = build_options(lab_config, corpus, policy=policy, dedup_mode=dedup_mode)
    target = target_dir(out_dir, options)
    if _reusable(target / MANIFEST_FILE, options):
      logging.info("reusing lab dataset %s", target)
    else:
      _build(target, corpus, CORPORA[corpus], source, options, policy, dedup_mode)
      logging.info("built lab dataset %s", target)
    out[corpus] = target / MANIFEST_FILE
  return out


def _lab_loader(load: Callable[..., loader.Loader], kinds: tuple[str, ...],
                lab_config: corpora_lib.LabConfig, data_dir: str | os.PathLike,
                tokenizer: Tokenizer, corpus: str, **kwargs) -> loader.Loader:
  if corpus not in CORPORA:
    raise ValueError(f"unknown lab corpus {corpus!r}; available: {sorted(CORPORA)}")
  if CORPORA[corpus].kind not in kinds:
    raise ValueError(f"lab corpus {corpus!r} holds {CORPORA[corpus].kind!r} records; this loader "
                     f"needs one of {list(kinds)}")
  path = prepare_lab_datasets(lab_config, pathlib.Path(data_dir) / "lab", corpora=(corpus,))
  return load(path[corpus], tokenizer, data_dir=data_dir, **kwargs)


def lab_sft_loader(lab_config: corpora_lib.LabConfig, data_dir: str | os.PathLike,
                   tokenizer: Tokenizer, *, corpus: str = "mixed/sft",
                   **kwargs) -> loader.Loader:
  """`load_sft_batches` over a lab corpus prepared in `<data_dir>/lab` (TFDS in `<data_dir>/tfds`).

  kwargs are those of `pipeline.load_sft_batches` (batch_size, seed, split, max_len, pack, ...).
  """
  return _lab_loader(pipeline.load_sft_batches, ("sft",), lab_config, data_dir, tokenizer,
                     corpus, **kwargs)


def lab_preference_loader(lab_config: corpora_lib.LabConfig, data_dir: str | os.PathLike,
                          tokenizer: Tokenizer, *, corpus: str = "reviews/preferences",
                          **kwargs) -> loader.Loader:
  """`load_preference_batches` over a lab preference corpus (e.g. "reviews/preferences_gold")."""
  return _lab_loader(pipeline.load_preference_batches, ("preference",), lab_config, data_dir,
                     tokenizer, corpus, **kwargs)


def lab_prompt_loader(lab_config: corpora_lib.LabConfig, data_dir: str | os.PathLike,
                      tokenizer: Tokenizer, *, corpus: str = "reviews/prompts",
                      **kwargs) -> loader.Loader:
  """`load_prompt_batches` over a lab corpus (prompt corpora, or the prompts of SFT/preferences)."""
  return _lab_loader(pipeline.load_prompt_batches, ("prompt", "sft", "preference"), lab_config,
                     data_dir, tokenizer, corpus, **kwargs)
