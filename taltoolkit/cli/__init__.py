"""Console scripts: ``taltoolkit-run`` (:mod:`.run`), ``taltoolkit-eval`` (:mod:`.eval`),
``taltoolkit-synthetic`` (:mod:`.synthetic`); ``tools/*.py`` are thin wrappers around them."""
