"""What the quick-start demos draw after training: pictures from a trained task and its data.

Runs once, after ``trainer.test``; nothing here is called from a training step.
:func:`contrastive_pictures` embeds the held-out zero-shot clips and their class prompts
again (a few seconds) to draw the confusion matrix and the embedding map, and reads the
run's ``metrics.csv`` for the curves.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


def metrics_csv_of(trainer) -> Path | None:
    """The ``metrics.csv`` the trainer's CSV logger wrote, if it has one."""
    for logger in getattr(trainer, "loggers", []) or []:
        log_dir = getattr(logger, "log_dir", None)
        if log_dir and (Path(log_dir) / "metrics.csv").is_file():
            return Path(log_dir) / "metrics.csv"
    return None


def picture_dir(trainer) -> Path:
    """Beside the checkpoint when there is one, else the run's log directory."""
    callback = getattr(trainer, "checkpoint_callback", None)
    best = getattr(callback, "best_model_path", "") if callback is not None else ""
    if best:
        return Path(best).parent
    return Path(trainer.log_dir or trainer.default_root_dir)


@torch.no_grad()
def zeroshot_embeddings(model, loader, class_names: list[str], audio_tower: str = "audio"):
    """``(audio [N, D], labels [N], class text [K, D])`` as numpy, for the labelled clips of ``loader``."""
    was_training = model.training
    model.eval()
    audio, labels = [], []
    try:
        for batch in loader:
            if "label" not in batch:
                continue
            waves = batch[audio_tower].to(model.device)
            lengths = batch.get("lengths")
            kwargs = {"lengths": lengths.to(model.device)} if lengths is not None else {}
            audio.append(model.embed(audio_tower, waves, **kwargs).float().cpu())
            labels.append(torch.as_tensor(batch["label"]).cpu())
        text = model.zeroshot_classifier(class_names).float().cpu()
    finally:
        model.train(was_training)
    if not audio:
        raise ValueError("the loader has no labelled clips")
    return torch.cat(audio).numpy(), torch.cat(labels).numpy(), text.numpy()


def contrastive_pictures(model, datamodule, trainer, out_dir: str | os.PathLike | None = None,
                         zeroshot_loader_index: int = 1) -> list[Path]:
    """``loss.png``, ``zeroshot_confusion.png`` and ``embeddings.png`` of a trained ContrastiveTask.

    Args:
        model: the trained task (``embed``, ``zeroshot_classifier``).
        datamodule: gives ``class_names`` and the test loaders; loader ``zeroshot_loader_index``
            holds the held-out labelled clips.
        trainer: the trainer that ran (its CSV log and checkpoint folder).
        out_dir: where to write (default: beside the checkpoint).
    """
    from clapkit.utils import plots

    out = Path(out_dir) if out_dir is not None else picture_dir(trainer)
    written = []
    metrics = metrics_csv_of(trainer)
    if metrics is not None:
        written.append(plots.training_curves(
            metrics, out / "loss.png", losses=("train/loss", "val/loss"),
            scores=("val/zeroshot_top1", "val/t2a_R@1", "val/a2t_R@1"), title="contrastive loss"))
    class_names = list(datamodule.class_names)
    loader = datamodule.test_dataloader()[zeroshot_loader_index]
    audio, labels, text = zeroshot_embeddings(model, loader, class_names)
    predictions = (audio @ text.T).argmax(axis=1)
    matrix = plots.confusion_matrix(labels, predictions, len(class_names))
    written.append(plots.confusion(matrix, class_names, out / "zeroshot_confusion.png"))
    written.append(plots.embedding_map(audio, labels, text, class_names, out / "embeddings.png",
                                       title="held-out classes: audio and text embeddings (PCA)"))
    return written


def curve_pictures(trainer, scores=(), out_dir: str | os.PathLike | None = None) -> list[Path]:
    """``loss.png`` from the run's CSV log (train/val loss and the validation ``scores``)."""
    from clapkit.utils import plots

    metrics = metrics_csv_of(trainer)
    if metrics is None:
        return []
    out = Path(out_dir) if out_dir is not None else picture_dir(trainer)
    return [plots.training_curves(metrics, out / "loss.png", scores=scores)]


@torch.no_grad()
def separation_pictures(model, datamodule, trainer, out_dir: str | os.PathLike | None = None) -> list[Path]:
    """``loss.png`` and ``separation.png`` (mixture / estimate / reference of the first test mixture)."""
    from clapkit.utils import plots

    out = Path(out_dir) if out_dir is not None else picture_dir(trainer)
    written = curve_pictures(trainer, scores=("val/si_sdri",), out_dir=out)
    batch = next(iter(datamodule.test_dataloader()))
    was_training = model.training
    model.eval()
    try:
        mixture = batch["mixture"][:1].to(model.device)
        condition = model.condition({k: (v[:1] if isinstance(v, (list, torch.Tensor)) else v) for k, v in batch.items()},
                                    model.eval_query)
        estimate = model(mixture, condition).waveform[0].float().cpu().numpy()
    finally:
        model.train(was_training)
    rate = int(model.model.separator.sample_rate)
    query = batch["positive_text"][0] if "positive_text" in batch else ""
    waves = {"mixture": batch["mixture"][0].numpy(), f"estimate: {query!r}"[:60]: estimate,
             "reference": batch["target"][0].numpy()}
    written.append(plots.spectrograms(waves, rate, out / "separation.png"))
    return written

