"""Drop-in replacements for the reference packages' inference APIs, backed by clapkit.

An existing script changes one import line::

    import laion_clap                          ->  from clapkit.compat import laion_clap
    from msclap import CLAP                    ->  from clapkit.compat.msclap import CLAP

Same class and method names, argument names, output shapes and dtypes. What differs, on
purpose: nothing is downloaded (checkpoints and text models are local paths, see each
module), and inference is deterministic where the references draw random crops. See
docs/MODELS.md ("Migrating from laion_clap and msclap").
"""

from clapkit.compat import laion_clap, msclap

__all__ = ["laion_clap", "msclap"]
