"""Building blocks of the paper's analyses: pure functions over the ragged feature-store
layout (``lcseg_steps.store``) that a later Snakemake grid combines.

- ``baselines``: per-image binary patch masks without clustering (all background, a
  centre prior, the CLS-attention mask).
- ``separability``: how separable foreground and background patch features are against
  ground truth (a threshold-free ROC-AUC and the best 2-way split's IoU, with histograms).
"""
