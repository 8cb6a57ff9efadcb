"""The model-directory format and everything that writes or reads one: save and load
(:mod:`.native`), the contradiction checks (:mod:`.consistency`), the files a model carries
(:mod:`.assets`), and export from a training run."""
