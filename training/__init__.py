"""parazoo.training: Lightning module, data modules, callbacks, loggers and the train CLI."""
