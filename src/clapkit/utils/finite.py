"""Finite checks on model outputs: a NaN or Inf embedding, feature or separated signal is refused.

Input samples that are NaN or Inf are refused when decoded (:func:`clapkit.audio.load_audio`);
finite but huge samples (a float WAV peaking at 1e29) pass that check and overflow inside the
model (the power spectrogram of 1e29 is inf in float32), which would give a NaN embedding or
an all-NaN separated file with exit code 0. Every inference path checks what it produces with
:func:`nonfinite_rows` and raises :class:`NonFiniteError`, which the commands turn into one line
naming the file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from clapkit.utils.deps import is_tensor

if TYPE_CHECKING:
    import torch


class NonFiniteError(ValueError):
    """A model output holds NaN or Inf values.

    Attributes:
        what: what was non-finite ("audio embedding", "separated audio", ...).
        index: position of the offending item in the input sequence (``None`` if unknown).
        peak: the largest absolute input sample of that item, when known (explains overflow).
        label: the input's name once known (a path), set by :meth:`named`.
    """

    def __init__(self, what: str, index: int | None = None, peak: float | None = None, label: str | None = None):
        self.what, self.index, self.peak, self.label = what, index, peak, label
        super().__init__(self._message())

    @property
    def reason(self) -> str:
        """The problem without the input's name."""
        text = f"non-finite {self.what} (NaN or Inf)"
        if self.peak is not None and np.isfinite(self.peak):
            text += f"; input peak {self.peak:.3g} overflows the model (audio should be within [-1, 1])"
        return text

    def named(self, label: str) -> NonFiniteError:
        """The same error naming its input (``label``: a path or ``audio[3]``)."""
        return NonFiniteError(self.what, self.index, self.peak, str(label))

    def _message(self) -> str:
        return f"{self.label}: {self.reason}" if self.label else self.reason


def nonfinite_rows(values: torch.Tensor | np.ndarray) -> list[int]:
    """Indices along the first axis of the rows holding any NaN or Inf."""
    if is_tensor(values):
        import torch

        bad = ~torch.isfinite(values.detach().reshape(values.shape[0], -1)).all(dim=1)
        return torch.nonzero(bad).flatten().tolist()
    array = np.asarray(values)
    bad = ~np.isfinite(array.reshape(array.shape[0], -1)).all(axis=1)
    return np.flatnonzero(bad).tolist()


def require_finite(values: torch.Tensor | np.ndarray, what: str, *, offset: int = 0,
                   inputs=None) -> None:
    """Raise :class:`NonFiniteError` for the first non-finite row of ``values`` ``[N, ...]``.

    Args:
        values: a batch of outputs, one row per input.
        what: what the rows are, for the message.
        offset: index of the batch's first row in the whole input sequence.
        inputs: the batch's inputs (arrays), to report the offending one's peak.
    """
    rows = nonfinite_rows(values)
    if not rows:
        return
    peak = None
    if inputs is not None:
        item = inputs[rows[0]]
        item = item.detach().float().cpu().numpy() if is_tensor(item) else np.asarray(item)
        peak = float(np.abs(item).max()) if item.size else None
    raise NonFiniteError(what, offset + rows[0], peak)
