"""Tests for rlhf_jax.notebooks.display: Markdown tables, metric rows, images outside IPython."""
import numpy as np
import pytest

from rlhf_jax.notebooks import display


def test_format_table():
  text = display.format_table([{"n": 1, "kl": 0.0, "name": "a|b"}, {"n": np.int64(2), "kl": np.float32(0.5),
                                                                   "extra": True}], digits=2)
  assert text.splitlines() == ["| n | kl | name | extra |", "|---|---|---|---|", "| 1 | 0.00 | a\\|b |  |",
                               "| 2 | 0.50 |  | True |"]
  assert display.format_table([{"x": float("nan")}], columns=["x"]).endswith("| nan |")
  with pytest.raises(ValueError, match="at least one row"):
    display.format_table([])


def test_dict_rows():
  values = {"accuracy": 0.5, "gold/spearman": 0.25, "nested": {"a": 1}, "examples": [1, 2]}
  assert display.dict_rows(values) == [{"metric": "accuracy", "value": 0.5},
                                       {"metric": "gold/spearman", "value": 0.25}]
  assert display.dict_rows(values, ["gold/spearman"], name="key") == [{"key": "gold/spearman", "value": 0.25}]
  with pytest.raises(KeyError, match="auc"):
    display.dict_rows(values, ["auc"])


def test_show_outside_ipython_prints(tmp_path, capsys):
  assert display.show_table([{"a": 1}]) is None
  image = tmp_path / "x.png"
  image.write_bytes(b"\x89PNG\r\n\x1a\n")
  display.show_images(image)
  out = capsys.readouterr().out
  assert "| a |" in out and f"[image] {image}" in out
  with pytest.raises(FileNotFoundError, match="missing.png"):
    display.show_images(tmp_path / "missing.png")
