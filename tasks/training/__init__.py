"""Training stage: the torchrun launcher, the worker script, its loop, schedules and training windows."""
