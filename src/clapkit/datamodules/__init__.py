"""clapkit.datamodules"""
