"""Optimizer-step times recorded on one H100, by the step benchmark's row label: what the GPU time
model (:mod:`distributed_shampoo_dash.gpu_time_model`) is compared with on the ``anchor`` preset.

Source: ``shared/measurements/`` (one H100 80GB HBM3 SXM, torch 2.11, TF32 off, 2026-11-22; the
README there gives the exact settings): ``h100-baseline`` and ``h100-dashgpu-lowprec`` for the
medians with roots every step, ``h100-freq10-upstream`` and ``h100-freq10-dashgpu`` for the medians
of steps without roots (roots every 10 steps).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class RecordedStep:
    """Median step times of one row on the H100.

    Attributes:
        with_roots_s (float): Roots every step.
        without_roots_s (float | None): A step without root computation (None: not recorded).
        note (str): What else the record says.
    """

    with_roots_s: float
    without_roots_s: float | None = None
    note: str = ""


RECORDED_H100: dict[str, RecordedStep] = {
    "upstream EigenConfig": RecordedStep(
        3.83, 0.102, note="root steps 3.63-3.91 s; 3.75 s with roots every 10 steps"
    ),
    "DashGpu eigh fp32": RecordedStep(3.16, 0.0340),
    "DashGpu Newton-DB fp32": RecordedStep(0.700, 0.0337),
    "DashGpu coupled Newton fp32": RecordedStep(0.511, 0.0339, note="fastest step 0.380 s"),
    "DashGpu Chebyshev fp32": RecordedStep(0.828, 0.0340),
    "DashGpu coupled Newton fp16": RecordedStep(0.2315),
    "DashGpu Newton-DB bf16": RecordedStep(0.171, note="parameters not finite"),
}
