"""clapkit.interop"""
