"""Tables and images in a notebook, without pandas or pyplot.

`format_table` renders rows (dicts) as a Markdown pipe table (`dict_rows` turns a flat metrics
dict into rows); `show_table` and `show_images`
display inline when running under IPython (Jupyter, Colab) and print otherwise, so the same
notebook code also runs as a plain script.
"""
from __future__ import annotations

import math
import os
import pathlib
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

PathLike = Union[str, os.PathLike]


def format_value(value: Any, digits: int = 3) -> str:
  """A cell: floats with `digits` decimals ("nan" for NaN), everything else via str()."""
  if isinstance(value, (bool, np.bool_)):
    return str(bool(value))
  if isinstance(value, (int, np.integer)):
    return str(int(value))
  if isinstance(value, (float, np.floating)):
    value = float(value)
    return "nan" if math.isnan(value) else f"{value:.{digits}f}"
  return str(value).replace("|", "\\|").replace("\n", " ")


def format_table(rows: Sequence[Mapping[str, Any]], columns: Optional[Sequence[str]] = None,
                 digits: int = 3) -> str:
  """A Markdown pipe table; columns default to the keys of the rows in first-seen order.

  Missing cells are blank. Example: format_table([{"n": 1, "kl": 0.0}]) ->
  "| n | kl |\\n|---|---|\\n| 1 | 0.000 |".
  """
  if not rows:
    raise ValueError("format_table needs at least one row")
  if columns is None:
    columns = list(dict.fromkeys(k for r in rows for k in r))
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  for r in rows:
    lines.append("| " + " | ".join(format_value(r[c], digits) if c in r else "" for c in columns) + " |")
  return "\n".join(lines)


def dict_rows(values: Mapping[str, Any], keys: Optional[Sequence[str]] = None,
              name: str = "metric") -> list[dict[str, Any]]:
  """[{name: key, "value": values[key]}] for `keys` (default: every scalar entry), for `show_table`.

  Raises KeyError naming a requested key that `values` lacks.
  """
  if keys is None:
    keys = [k for k, v in values.items() if isinstance(v, (int, float, str, np.integer, np.floating))]
  missing = [k for k in keys if k not in values]
  if missing:
    raise KeyError(f"dict_rows: no entries {missing} (have {sorted(values)[:20]})")
  return [{name: k, "value": values[k]} for k in keys]


def _ipython():
  try:
    from IPython import get_ipython  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return get_ipython()


def show_table(rows: Sequence[Mapping[str, Any]], columns: Optional[Sequence[str]] = None,
               digits: int = 3) -> None:
  """Displays `format_table(...)` as Markdown under IPython (printed otherwise).

  Returns None, so a call ending a notebook cell adds no echo of its value.
  """
  text = format_table(rows, columns, digits)
  if _ipython() is not None:
    from IPython.display import Markdown, display  # pylint: disable=g-import-not-at-top
    display(Markdown(text))
  else:
    print(text)


def show_images(*paths: PathLike, width: Optional[int] = None) -> None:
  """Displays PNG files inline under IPython (prints their paths otherwise); raises if one is missing."""
  out = [pathlib.Path(p) for p in paths]
  for p in out:
    if not p.is_file():
      raise FileNotFoundError(f"no image {p}")
  if _ipython() is not None:
    from IPython.display import Image, display  # pylint: disable=g-import-not-at-top
    for p in out:
      display(Image(filename=str(p), width=width))
  else:
    for p in out:
      print(f"[image] {p}")
