"""``dstrain speedcheck``: will sparsity make this model faster on this device, in this dtype?

The most common disappointment with sparse models is that the trained model runs no faster.
Whether it does depends on the layer shapes, the batch size, the dtype and the kernels the
device has, so this package measures rather than predicts: every distinct Linear/Conv2d shape
of the model, at the user's batch sizes, dense against 2:4 semi-structured and unstructured
(CSR) sparse, plus a dense forward of the whole model to put the layers in proportion.

Modules, one job each: :mod:`.model_source` (the user's argument -> a model and its inputs),
:mod:`.shapes` (distinct layer shapes by a forward with hooks), :mod:`.paths` (the dense and
sparse callables of one shape, and why a path cannot run), :mod:`.timing` (timing a callable
inside a budget), :mod:`.runner` (what is measured in which order), :mod:`.report` (tables,
totals, verdict, JSON); the command line is :mod:`dstrain.cli.speedcheck`.
"""
