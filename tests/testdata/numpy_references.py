"""Float64 NumPy references shared by several test files, written as explicit loops and
independently of the library code they check."""
import numpy as np


def gae(rewards, values, mask, gamma, lam):
  """GAE over each row's masked positions (masked positions are skipped; bootstrap 0 after the last
  valid token). Returns (advantages, returns = advantages + values), both 0 where mask is 0."""
  adv = np.zeros_like(rewards, dtype=np.float64)
  for b in range(rewards.shape[0]):
    next_value, next_adv = 0.0, 0.0
    for t in reversed(range(rewards.shape[1])):
      if not mask[b, t]:
        continue
      delta = rewards[b, t] + gamma * next_value - values[b, t]
      adv[b, t] = delta + gamma * lam * next_adv
      next_value, next_adv = values[b, t], adv[b, t]
  return adv, np.where(mask > 0, adv + values, 0.0)


def ece(probs, labels, num_bins=10):
  """Expected calibration error over uniform bins (the last bin closed on the right)."""
  total = 0.0
  for m in range(num_bins):
    lo, hi = m / num_bins, (m + 1) / num_bins
    sel = (probs >= lo) & ((probs < hi) if m < num_bins - 1 else (probs <= hi))
    if sel.any():
      total += sel.sum() * abs(labels[sel].mean() - probs[sel].mean())
  return total / probs.size
