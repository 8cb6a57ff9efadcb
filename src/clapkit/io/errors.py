"""The errors a model file or directory raises, importable without torch (the config readers use them)."""


class PretrainedError(ValueError):
    """A model file or directory cannot be used; the message names the path and the problem."""


class CheckpointError(PretrainedError):
    """An official checkpoint cannot be converted; the one-line message names file and problem."""
