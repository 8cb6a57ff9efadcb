"""``BaseTask``: what every clapkit LightningModule shares (in the spirit of torchgeo's BaseTask).

- Optimisation comes from LightningCLI factories: ``optimizer`` (``OptimizerCallable``,
  ``params -> Optimizer``) and ``scheduler`` (``LRSchedulerCallable``, ``optimizer ->
  scheduler`` or ``None``), chosen in YAML by ``class_path``. A task hands them to
  :meth:`BaseTask.set_optimization` in its ``__init__``.
- One monitor convention: :attr:`BaseTask.monitor` names the metric a plateau scheduler (and
  a checkpoint callback configured from the task) watches, as logged (``val/si_sdri``,
  ``val/loss``); ``scheduler_interval`` says whether the scheduler steps per ``epoch`` or
  per ``step``.
- Only parameters that require gradients reach the optimiser (:meth:`optimizer_parameters`,
  which a task overrides to return parameter groups).
- Hyperparameters are the task's config (:meth:`BaseTask.save_config_hyperparameters`):
  arguments that are modules are recorded as their ``class_path`` trees when the task was built
  from a config, and left out when it was built in Python (the checkpoint's state dict holds
  their weights; a module object in ``hparams`` would be pickled and deep-copied).
- The preprocessing a model learns from its data: at fit start the datamodule's
  :meth:`~clapkit.datamodules.base.AudioDataModule.inference_config` (how its evaluation batches
  were cut from raw audio) becomes :attr:`BaseTask.inference` (stored in ``self.model.inference``
  when the task has a plain ``model``) and travels in the Lightning checkpoint as a plain dict
  (:data:`~clapkit.audio.preprocess.INFERENCE_KEY`), so ``clapkit export`` writes it out.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn

from clapkit.audio.preprocess import INFERENCE_KEY, InferenceConfig, inference_of_checkpoint
from clapkit.datamodules.base import AudioDataModule
from clapkit.lightning_modules.optim import optimizers_from_factories


class BaseTask(LightningModule):
    """Base of clapkit's tasks: optimiser/scheduler factories and the monitored metric."""

    optimizer_factory: Callable[..., torch.optim.Optimizer] | None = None
    scheduler_factory: Callable[[torch.optim.Optimizer], Any] | None = None
    monitor: str | None = None
    scheduler_interval: Literal["epoch", "step"] = "epoch"
    _inference: InferenceConfig | None = None

    @property
    def inference(self) -> InferenceConfig | None:
        """The preprocessing learned from the data (``self.model.inference`` when the task has a
        plain model that knows it); ``None`` before fit start or a checkpoint that holds it."""
        known = getattr(getattr(self, "model", None), "inference", None)
        return known if isinstance(known, InferenceConfig) else self._inference

    @inference.setter
    def inference(self, config: InferenceConfig | None) -> None:
        self._inference = config
        model = getattr(self, "model", None)
        if model is not None:
            model.inference = config

    def on_fit_start(self) -> None:
        # The data of this run is the truth, even when resuming from a checkpoint that says otherwise.
        datamodule = getattr(self.trainer, "datamodule", None)
        if not isinstance(datamodule, AudioDataModule):
            return
        try:
            config = datamodule.inference_config()
        except ValueError as exc:  # e.g. a random evaluation crop: the model learns nothing rather than fail
            rank_zero_warn(f"{type(datamodule).__name__}: no inference settings for the model ({exc})")
            return
        if config is not None:
            # the data decides the audio side; the text tower's token limit is the model's own
            if config.text_max_length is None and self.inference is not None:
                config = replace(config, text_max_length=self.inference.text_max_length)
            self.inference = config

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.inference is not None:
            checkpoint[INFERENCE_KEY] = self.inference.to_dict()

    def set_optimization(
        self,
        optimizer: Callable[..., torch.optim.Optimizer] | None,
        scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        *,
        monitor: str | None = None,
        interval: Literal["epoch", "step"] = "epoch",
    ) -> None:
        """Record the factories, the monitored metric and the scheduler's interval."""
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.monitor = monitor
        self.scheduler_interval = interval

    def save_config_hyperparameters(self, modules: Sequence[str] = (), ignore: Sequence[str] = (),
                                    model_class: type | None = None) -> None:
        """Save the ``__init__`` arguments of the calling task as ``hparams``, module arguments only as config.

        Args:
            modules: arguments that hold ``nn.Module``\\ s (``"towers"``). Built from a config
                (LightningCLI), ``hparams`` are that config and keep these arguments as their
                ``class_path`` trees, so ``load_from_checkpoint`` and :func:`clapkit.hub.native.model_config_of`
                can rebuild the task; built in Python they are module objects and are left out.
            ignore: arguments never saved (factories such as ``optimizer``).
            model_class: the class of the task's model, whose arguments the task takes as
                ``**kwargs``: their defaults are saved too.

        A config instantiation is recognised by the ``_instantiator`` entry Lightning's CLI writes
        into the hyperparameters it hands over (and into every checkpoint, where
        ``load_from_checkpoint`` reads it back), not by Lightning's private context variable.
        """
        frame = inspect.currentframe().f_back
        # First without the module arguments: from Python this never copies a module.
        self.save_hyperparameters(ignore=[*ignore, *modules], frame=frame)
        if modules and "_instantiator" in self.hparams:
            self.save_hyperparameters(ignore=list(ignore), frame=frame)
        if model_class is not None:
            # Model arguments reach the task as ``**kwargs``: those left at their defaults are
            # recorded too, as LightningCLI records every argument.
            for name, parameter in inspect.signature(model_class).parameters.items():
                if name not in self.hparams and name not in modules and parameter.default is not parameter.empty:
                    self.hparams[name] = parameter.default

    def model_config(self, model_class: type) -> dict[str, Any] | None:
        """The ``class_path``/``init_args`` tree of the task's model, from the task's config.

        The model's arguments are those of ``model_class``'s signature the hyperparameters hold
        (LightningCLI hands every one, defaults included, as ``class_path`` trees); ``None`` when
        the task was built in Python (its module arguments are objects, not trees).
        """
        if "_instantiator" not in self.hparams:
            return None
        from clapkit.hub.directory import plain

        names = inspect.signature(model_class).parameters
        return {"class_path": f"{model_class.__module__}.{model_class.__qualname__}",
                "init_args": {name: plain(self.hparams[name]) for name in names if name in self.hparams}}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Map a checkpoint saved before the task owned ``self.model`` (keys ``towers.``...) onto
        today's keys (``model.towers.``...) through :mod:`clapkit.interop.legacy`."""
        from clapkit.interop.legacy import upgrade_task_state

        # the preprocessing the model had learned comes back with its weights
        self.inference = inference_of_checkpoint(checkpoint) or self.inference
        if isinstance(checkpoint.get("state_dict"), dict):
            checkpoint["state_dict"] = upgrade_task_state(self.state_dict(), checkpoint["state_dict"])

    def optimizer_parameters(self):
        """What the optimiser factory is given: every parameter that requires gradients."""
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise ValueError(f"{type(self).__name__} has no optimizer")
        config: dict[str, Any] = {"interval": self.scheduler_interval}
        if self.monitor is not None:
            config["monitor"] = self.monitor
        return optimizers_from_factories(self, self.optimizer_factory, self.scheduler_factory,
                                         parameters=self.optimizer_parameters(), **config)

    # --- the task's plain model (classification, separation, spatial) ----------------------------
    def model_from_arguments(self, model_class: type, arguments: dict[str, Any]):
        """``model_class`` built from the task arguments its signature names, with its config tree.

        Built from a config (LightningCLI), ``hparams`` hold those arguments as ``class_path``
        trees: they become the model's ``config``, so a model directory rebuilds the model alone.
        """
        names = [name for name in inspect.signature(model_class).parameters if name in arguments]
        model = model_class(**{name: arguments[name] for name in names})
        model.config = self.model_config(model_class)
        return model

    def saved_model_config(self, task_config: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ``class_path`` tree of :attr:`model`: its own ``config``, else the model's arguments
        taken from the task's tree (``task_config``, by default the run's LightningCLI ``config.yaml``)."""
        model = self.model
        if task_config is None and model.config is not None:
            return model.config
        if task_config is None:
            from pathlib import Path

            from clapkit.hub.native import read_model_section

            log_dir = getattr(self.trainer, "log_dir", None) if self._trainer is not None else None
            candidate = Path(log_dir or ".") / "config.yaml"
            if not candidate.is_file():
                raise FileNotFoundError(f"{candidate}: no LightningCLI config to describe the model")
            task_config = read_model_section(candidate)
        return _model_tree(type(model), task_config.get("init_args") or {})


def _model_tree(model_class: type, arguments: Any) -> dict[str, Any]:
    """``{class_path, init_args}`` of ``model_class`` from the task arguments its signature names."""
    from clapkit.hub.native import plain

    names = [name for name in inspect.signature(model_class).parameters if name in arguments]
    return plain({"class_path": f"{model_class.__module__}.{model_class.__qualname__}",
                  "init_args": {name: arguments[name] for name in names}})
