"""The command-line layer: one module per ``s2agri`` command.

Each ``*_command(args)`` turns the parsed arguments into a config, calls the workflow functions of
:mod:`s2agri.workflows` and prints the results; the workflows themselves take no
``argparse.Namespace`` and print nothing (checked in ``tests/test_layers.py``).
"""
