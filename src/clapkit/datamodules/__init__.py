"""Data sources and LightningDataModules.

Every datamodule yields batch dicts in the layout of :mod:`clapkit.datamodules.base`; those
used for evaluation follow the protocol of :mod:`clapkit.lightning_modules.contrastive`
(``captions`` for retrieval, ``label`` plus a ``class_names`` attribute for zero-shot).
Modules are imported by their full path (``clapkit.datamodules.synthetic``) so that the
light ``base`` contract does not pull in Lightning.
"""
