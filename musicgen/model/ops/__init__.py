"""Kernels of the model: functions on tensors (autograd Functions with hand-written backwards, recurrent
steps), no ``nn.Module`` and no parameters. The modules in ``musicgen/model/`` own the parameters and call
these (the flash-linear-attention split: ``ops/`` vs layers).

* :mod:`.linear_attention` — causal linear attention, chunked (training, prefill) and recurrent (generation).
* :mod:`.sine_filter` — SineSPE filtering of queries and keys from factorised codes.
* :mod:`.feature_maps` — the elu+1 and FAVOR+ feature maps, parallel and one-step forms.

Reference implementations used only by the tests live in ``tests/reference_kernels.py``.
"""
