"""Small helpers every layer may use: atomic outputs (:mod:`.atomic`), torch-free type checks
(:mod:`.deps`), skipped random init (:mod:`.fastinit`), non-finite checks (:mod:`.finite`),
precision policies (:mod:`.precision`), packaged resources (:mod:`.resources`) and plots
(:mod:`.plots`)."""
