"""clapkit.callbacks"""
