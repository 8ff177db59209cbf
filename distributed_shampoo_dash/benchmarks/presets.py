"""Benchmark presets: Llama-shaped parameter sets for the step benchmark and the DDP balance, stacks
of SPD matrices for the solver benchmark.

Step presets (:data:`PRESETS`):
    gpu: hidden 1024, 8 layers, FFN 2816, vocab 32000, max_preconditioner_dim 1024
    anchor: the parameter set of the step times recorded on one H100
        (``shared/measurements/README.md``): embedding (32000, 1024); 8 layers of norm (1024,),
        fused qkv (3072, 1024), out (1024, 1024), norm (1024,), gate (2816, 1024),
        up (2816, 1024), down (1024, 2816); final norm (1024,); no output head;
        max_preconditioner_dim 1024 (289 factor matrices: 264 of 1024, 24 of 768, 1 of 256)
    cpu: hidden 128, 2 layers, FFN 352, vocab 512, max_preconditioner_dim 128 (about a minute)
    many-blocks: hidden 128, 4 layers, FFN 352, vocab 512, max_preconditioner_dim 32: many small
        blocks, where per-block overhead dominates on a CPU as it does on a GPU
    layers: 200 weights of 256 x 256, max_preconditioner_dim 256 (many same-shape layers)
    smoke: hidden 32, 1 layer, FFN 64, vocab 64, max_preconditioner_dim 16 (seconds)

Solver presets (:data:`STACK_PRESETS`):
    gpu: stacks (64, 1024, 1024) and (256, 256, 256), 10 repeats
    cpu: stacks (8, 128, 128) and (32, 64, 64), 5 repeats (well under a minute on 2 idle cores)
    smoke: stack (4, 32, 32), 2 repeats (seconds; what scripts/gpu_report.py --smoke runs)
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    """A parameter set and the optimizer's block size."""

    shapes: tuple[tuple[int, ...], ...]
    max_preconditioner_dim: int

    @classmethod
    def llama(cls, hidden: int, layers: int, ffn: int, vocab: int, block: int) -> "Preset":
        """Embedding, per layer (4 attention, 3 MLP, 2 norm weights), final norm, untied head."""
        layer = [(hidden, hidden)] * 4 + [
            (ffn, hidden),
            (ffn, hidden),
            (hidden, ffn),
            (hidden,),
            (hidden,),
        ]
        shapes = [(vocab, hidden), *layer * layers, (hidden,), (vocab, hidden)]
        return cls(tuple(shapes), block)

    @classmethod
    def fused_llama(cls, hidden: int, layers: int, ffn: int, vocab: int, block: int) -> "Preset":
        """Embedding, per layer (norm, fused qkv, out, norm, gate, up, down), final norm, no
        head."""
        layer = [
            (hidden,),
            (3 * hidden, hidden),
            (hidden, hidden),
            (hidden,),
            (ffn, hidden),
            (ffn, hidden),
            (hidden, ffn),
        ]
        return cls(((vocab, hidden), *layer * layers, (hidden,)), block)


PRESETS = {
    "gpu": Preset.llama(hidden=1024, layers=8, ffn=2816, vocab=32000, block=1024),
    # The recorded H100 step times' parameter set (the GPU time model's calibration).
    "anchor": Preset.fused_llama(hidden=1024, layers=8, ffn=2816, vocab=32000, block=1024),
    "cpu": Preset.llama(hidden=128, layers=2, ffn=352, vocab=512, block=128),
    # Many small blocks: per-block overhead dominates on a CPU as it does on a GPU.
    "many-blocks": Preset.llama(hidden=128, layers=4, ffn=352, vocab=512, block=32),
    # Many same-shape layers: 200 weights of 256 x 256, one block each.
    "layers": Preset(((256, 256),) * 200, 256),
    # Seconds on a CPU: what scripts/gpu_report.py --smoke runs.
    "smoke": Preset.llama(hidden=32, layers=1, ffn=64, vocab=64, block=16),
}


#: A stack shape ``(N, d, d)``.
Shape = tuple[int, int, int]


@dataclass(frozen=True)
class StackPreset:
    """Stack shapes ``(N, d, d)`` and the default number of timed repeats."""

    shapes: tuple[Shape, ...]
    repeats: int


STACK_PRESETS = {
    "gpu": StackPreset(shapes=((64, 1024, 1024), (256, 256, 256)), repeats=10),
    "cpu": StackPreset(shapes=((8, 128, 128), (32, 64, 64)), repeats=5),
    "smoke": StackPreset(shapes=((4, 32, 32),), repeats=2),
}
