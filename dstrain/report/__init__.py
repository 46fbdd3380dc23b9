"""Under-training diagnostics: compare finished runs against dense runs of the same length.

    dstrain report runs/dense_1x runs/gmp90_1x runs/gmp90_3x --out report/
    dstrain report runs/ --out report/                    # every run folder inside runs/
    dstrain report runs/                                  # report.md and report.png go into runs/

Reads each run folder written by :class:`~dstrain.run.trainer.SparseTrainer`
(``metrics.jsonl``, ``recipe.json`` and, once finished, ``result.json``) and writes

* ``report.png``: validation accuracy, training loss and weight sparsity per epoch, one line
  per run (colour = method and sparsity, line style = run length);
* ``report.md``: one row per run (final sparsity, final and best validation score, final
  training loss and its gap to the dense reference run, mean mask change rate, how much the
  training loss still fell over the last quarter of training), and a second table with the
  effect of longer training for each method seen at several lengths.

Sparse models are under-trained when their training loss stays well above the dense
model's and is still falling at the end; if a longer schedule shrinks that gap, the
standard schedule was too short for them.  The dense reference of a run is the dense run
(no pruning) of the same length when there is one, else the dense run closest in length;
runs named "dense" are preferred.
"""
from dstrain.report.markdown import length_effects, markdown, seed_markdown, summary_rows
from dstrain.report.plot import plot
from dstrain.report.runs import (DENSE_SPARSITY, Run, dense_reference, expand_run_dirs, late_drop, load_run, load_runs,
                                 mean_mask_change)
from dstrain.report.seeds import (NOISE_SE, Stat, diff_stat, mean_curves, mean_se, seed_groups, seed_length_effects,
                                  seed_rows)
from dstrain.report.writer import write_report

__all__ = ["DENSE_SPARSITY", "NOISE_SE", "Run", "Stat", "dense_reference", "diff_stat", "expand_run_dirs", "late_drop",
           "length_effects", "load_run", "load_runs", "markdown", "mean_curves", "mean_mask_change", "mean_se", "plot",
           "seed_groups", "seed_length_effects", "seed_markdown", "seed_rows", "summary_rows", "write_report"]
