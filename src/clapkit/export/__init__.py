"""Export in one place, a module per target:

- :mod:`.checkpoint`: a training run's Lightning checkpoint -> a native model directory
  (``clapkit export CKPT``);
- :mod:`.hf`: a native CLAP -> a Hugging Face transformers ``ClapModel`` directory
  (``clapkit export hf``);
- :mod:`.onnx`: a native CLAP's towers -> ONNX graphs run by
  :class:`~clapkit.inference.onnx.OnnxCLAPModel` (``clapkit export onnx``).

Native directories themselves are written by :func:`clapkit.hub.native.save_pretrained`, which
every target above builds on.
"""
