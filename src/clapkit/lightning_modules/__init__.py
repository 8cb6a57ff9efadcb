"""clapkit.lightning_modules"""
