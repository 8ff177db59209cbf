"""DistributedShampoo + DASH inside training frameworks: one module per framework.

* :mod:`distributed_shampoo_dash.trainers.torchtitan`: an ``OptimizersContainer`` and its config
  that a torchtitan config module names to train with ``DistributedShampoo`` and DASH.
* :mod:`distributed_shampoo_dash.trainers.lightning`: Lightning ``ModelParallelStrategy`` (FSDP2)
  checkpoints of ``DistributedShampoo``.
* :mod:`distributed_shampoo_dash.trainers.accelerate`: Hugging Face accelerate (FSDP2): build the
  optimizer after ``prepare``, and an error instead of silently frozen weights when it is not.

What they share, free of any framework:

* :mod:`distributed_shampoo_dash.trainers.optimizer`: solver and grafting names, the distributed
  config inferred from FSDP2 parameters, ``build_shampoo``;
* :mod:`distributed_shampoo_dash.trainers.checkpoint`: hooks for the param-group values that
  ``torch.distributed.checkpoint``'s state-dict options reject;
* :mod:`distributed_shampoo_dash.trainers.parameter_guard`: an error at ``step()`` when a wrapper
  has replaced the optimizer's parameters.

Importing this package imports nothing; each framework module imports its framework (and upstream
``distributed_shampoo``) when it is imported. Versions tested: see ``docs/trainers.md``.
"""
