"""Defaults of ``s2agri demo``, apart from the demo's code so the command line reads them without its imports."""

#: Simulation seed, box size (10 m px), training and test boxes.
DEFAULT_SEED, DEFAULT_SIZE, DEFAULT_TRAIN, DEFAULT_TEST = 0, 250, 4, 2
