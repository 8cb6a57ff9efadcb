"""LightningModules (training, losses, metrics); encoders stay plain ``nn.Module``s elsewhere.

``ContrastiveTask`` is importable from here so configs can say
``class_path: clapkit.lightning_modules.ContrastiveTask``.
"""

from clapkit.lightning_modules.contrastive import ContrastiveStepOutput, ContrastiveTask

__all__ = ["ContrastiveStepOutput", "ContrastiveTask"]
