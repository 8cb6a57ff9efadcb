"""Official checkpoints -> clapkit models, through explicit key maps with a coverage check.

:mod:`clapkit.interop.keymap` holds the shared machinery (:class:`~clapkit.interop.keymap.KeyMap`,
:func:`~clapkit.interop.keymap.unwrap_state_dict`, :class:`~clapkit.interop.keymap.CheckpointError`);
each family has its own module (``laion_clap``, ``msclap``, ...) exposing a ``CHECKPOINT_FORMAT``
registered in :data:`clapkit.interop.registry.CHECKPOINT_FORMATS`. Family modules are imported on
demand, so importing this package stays cheap (without torch: :mod:`clapkit.interop.legacy` is read
by the torch-free directory reader).
"""
