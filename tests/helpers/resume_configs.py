"""YAML pieces the kill-and-resume tests share (``str.format`` templates: ``{root}``, ``{every}``,
``{sleep}``; literal braces doubled).

``RUN_CALLBACKS`` is the trainer's callback list: a checkpoint every ``{every}`` steps with
``last.ckpt``, the step log the tests watch to know when to kill, and the final metrics file
they compare. ``TINY_CONTRASTIVE_MODEL`` is the tiny ContrastiveTask they train.
"""

RUN_CALLBACKS = """  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: {root}/checkpoints, save_last: true, every_n_train_steps: {every}, save_top_k: 0}}
    - class_path: helpers.scale.StepLog
      init_args: {{path: {root}/steps.log, sleep: {sleep}}}
    - class_path: helpers.scale.FinalMetrics
      init_args: {{path: {root}/final.json}}
"""

TINY_CONTRASTIVE_MODEL = """model:
  class_path: clapkit.lightning_modules.ContrastiveTask
  init_args:
    lr: 0.003
    towers:
      audio:
        class_path: clapkit.encoders.tower.Tower
        init_args:
          encoder: {{class_path: helpers.training.TinyAudio}}
          projection: {{class_path: clapkit.encoders.projection.ResidualProjection, init_args: {{out_dim: 16, dropout: 0.3}}}}
      text:
        class_path: clapkit.encoders.tower.Tower
        init_args:
          encoder: {{class_path: helpers.training.TinyText}}
          projection: {{class_path: clapkit.encoders.projection.ResidualProjection, init_args: {{out_dim: 16, dropout: 0.3}}}}
"""
