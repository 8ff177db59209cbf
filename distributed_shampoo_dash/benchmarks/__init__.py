"""The library behind the measuring scripts of ``scripts/``: one job per module.

* :mod:`.cli`: the scripts' help formatter, device names and JSON output;
* :mod:`.presets`: Llama-shaped parameter sets (step benchmark, DDP balance) and stacks of SPD
  matrices (solver benchmark);
* :mod:`.step_rows`, :mod:`.step_runs`, :mod:`.step_tables`, :mod:`.solver_messages`: the step
  benchmark (``scripts/benchmark.py``): its rows, how a row is run and counted, its tables, and
  what the solvers log meanwhile;
* :mod:`.peer_dashgpu`: the DASH authors' ``DashGpu``, for side-by-side rows;
* :mod:`.recorded_h100`: the step times recorded on one H100, which the GPU time model
  (:mod:`distributed_shampoo_dash.gpu_time_model`) is compared with;
* :mod:`.solver_rows`, :mod:`.spectra`, :mod:`.solver_runs`, :mod:`.solver_tables`: the solver
  benchmark (``scripts/benchmark_solvers.py``);
* :mod:`.stack_balance`: how evenly upstream's DDP assignment spreads solver work
  (``scripts/stack_balance.py``);
* :mod:`.gpu_plan`, :mod:`.gpu_parts`, :mod:`.gpu_targets`, :mod:`.gpu_markdown`: the GPU report
  (``scripts/gpu_report.py``): its sizes, parts, the docs' targets as a table, and the report.
* :mod:`.quality_runs`, :mod:`.quality_report`: the training-quality study
  (``scripts/quality_study.py``): its runs and its report;
* :mod:`.timing`: device-synchronised wall time of repeated calls.

The step, balance, quality and GPU-report modules need upstream ``distributed_shampoo``;
importing this package imports none of them.
"""
