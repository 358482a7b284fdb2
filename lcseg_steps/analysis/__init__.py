"""Building blocks of the paper's analyses: pure functions over the ragged feature-store
layout (``lcseg_steps.stores.layout``) that a later Snakemake grid combines.

- ``baselines``: per-image binary patch masks without clustering (all background, a
  centre prior, the CLS-attention mask).
- ``separability``: how separable foreground and background patch features are against
  ground truth (a threshold-free ROC-AUC and the best 2-way split's IoU, with histograms).
- ``table``: the grid's variants (methods and baselines) with mIoU over seeds, and the
  separability of each backbone layer, as CSV, Markdown and plots.

Each module has the ``run(job)`` of its Snakemake rule (``lcseg_steps.runner.adapter``).
"""
