"""The engine: what runs a method. ``trainer`` (the loop) and ``hooks`` (checkpoints,
evaluation, model selection, logging, progress, NaN checks, stopping), ``schedules``,
``batching``, ``checkpoint``, ``distributed`` (the process group), ``evaluator``, ``method``
(the protocol methods implement), ``feature_bank``, ``logger``, ``reporting`` and ``sweep``."""
