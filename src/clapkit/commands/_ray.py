"""``clapkit embed --engine ray``: the options and the glue to :mod:`clapkit.inference.ray_embed`."""

from __future__ import annotations

import argparse
import copy
import functools
import warnings

from clapkit.commands import CommandError, _shared

AUDIO_ONLY = ("audio",)


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """``--engine``, ``--ray-address``, ``--ray-actors``."""
    group = parser.add_argument_group("scale-out (docs/SCALING.md)")
    group.add_argument("--engine", choices=["plain", "ray"], default="plain",
                       help="plain: this process and its decoders; ray: Ray Data (decode tasks, model actors), "
                            "needs the ray extra: pip install 'clapkit[ray]'")
    group.add_argument("--ray-address", default=None, metavar="ADDR",
                       help="with --engine ray: join a running Ray cluster (auto or host:port); "
                            "default: a Ray instance on this machine for the job")
    group.add_argument("--ray-actors", type=int, default=None, metavar="N",
                       help="with --engine ray: model holders (default: one per GPU of the cluster, else one)")


def check_engine_options(args: argparse.Namespace) -> None:
    """Refuse Ray options without ``--engine ray`` and what the Ray engine does not run."""
    if args.engine != "ray":
        given = [flag for flag, value in (("--ray-address", args.ray_address), ("--ray-actors", args.ray_actors))
                 if value is not None]
        if given:
            raise CommandError(f"{' and '.join(given)}: only with --engine ray")
        return
    if args.ray_actors is not None and args.ray_actors < 1:
        raise CommandError(f"--ray-actors must be at least 1, got {args.ray_actors}")
    if args.runtime != "torch":
        raise CommandError("--engine ray runs the PyTorch model; use --runtime onnx without it")


def embed_with_ray(model, args: argparse.Namespace, files, output, *, lengths, progress, may_skip):
    """:func:`~clapkit.inference.ray_embed.embed_corpus_ray` with the command's model and options.

    ``model`` is the one this process loaded (its checks, fingerprint, batch size and
    preprocessing are the job's); each actor loads its own copy from ``args.model``.
    """
    import torch

    from clapkit.audio.preprocess import prepare_audio
    from clapkit.inference.ray_embed import RayOptions, embed_corpus_ray

    gpus = False if args.device == "cpu" else (None if args.device == "auto" else True)
    # A local instance's actors compute with this process's thread count, as the plain command would.
    threads = torch.get_num_threads() if args.ray_address is None else None
    options = RayOptions(address=args.ray_address, actors=args.ray_actors, gpus=gpus, threads=threads)
    load = functools.partial(actor_model, _actor_args(args, model.batch_size))
    prepare = functools.partial(prepare_audio, spec=model.inference, max_seconds=model.max_seconds)
    try:
        with warnings.catch_warnings():
            # Ray Data's advice to add input blocks when an actor pool is wider than the parts
            # in flight: the parts are the unit, there is nothing to add.
            warnings.filterwarnings("ignore", message="The minimum number of concurrent actors")
            return embed_corpus_ray(load, prepare, files, output, fingerprint=model.fingerprint,
                                    dim=model.embedding_dim, batch_size=model.batch_size,
                                    part_size=args.part_size, resume=not args.no_resume, lengths=lengths,
                                    progress=progress, may_skip=may_skip, options=options)
    except Exception as exc:
        if not _from_ray(exc):
            raise
        raise CommandError(f"--engine ray: the Ray pipeline failed: {_last_line(exc)}") from None


def _from_ray(exc: BaseException) -> bool:
    """An error Ray raised (a task, an actor, the cluster), rather than one of clapkit's own."""
    return any(type(e).__module__.startswith("ray.") for e in (exc, exc.__cause__) if e is not None)


def _last_line(exc: BaseException) -> str:
    """Ray's errors carry the worker's traceback; its last line names the error."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _actor_args(args: argparse.Namespace, batch_size: int) -> argparse.Namespace:
    """What an actor needs to load the model as this process did, on its own device."""
    keep = copy.copy(args)
    keep.batch_size = batch_size  # the batches the decode tasks cut
    if keep.device.startswith("cuda"):
        keep.device = "cuda"  # an actor sees only the GPU Ray gave it
    return keep


def actor_model(args: argparse.Namespace):
    """The model inside a Ray actor (a module-level function, so Ray pickles it by name)."""
    return _shared.load_model(args.model, args, towers=AUDIO_ONLY)
