"""Reading what a user hands over, safely: checkpoints without pickled code (:mod:`.checkpoint`),
configs someone else wrote (:mod:`.trust`), and the exact identity of weight files
(:mod:`.identity`). Nothing here knows a model class."""
